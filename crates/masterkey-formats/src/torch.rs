//! PyTorch checkpoints: the zip format of PyTorch >= 1.6 and the legacy
//! format before it. Both hold a pickled object, usually a state dict, whose
//! tensors point through persistent ids at raw little-endian storages kept
//! next to the pickle (see `pickle` for why the pickle is decoded by hand).
//!
//! A depthwise weight is `[C, 1, kh, kw]`, already the project's layout; it
//! may be a strided view into a larger storage, so its elements are gathered
//! by stride rather than copied as one block.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::Path;

use masterkey_core::{DwLayer, Error, KernelSize, Result};
use zip::ZipArchive;

use crate::dtype::{self, ElemType};
use crate::named;
use crate::pickle::{self, Node, Pickle, Value};
use crate::NamedTensor;

/// The first pickle of a legacy file.
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// The second pickle of a legacy file: the only format version PyTorch wrote.
const LEGACY_PROTOCOL_VERSION: i128 = 1001;

/// Keys under which training scripts nest the state dict, most specific first.
const PREFERRED_KEYS: [&str; 7] = ["state_dict", "model_state_dict", "model", "module", "net", "model_ema", "ema"];

/// How deep nested dicts are searched for a state dict, and how many wrappers
/// (`Parameter` around a tensor) are unwrapped: far more than real files use,
/// and a bound on the work a hostile one can cause.
const MAX_NESTING: usize = 8;

/// Reads a PyTorch >= 1.6 zip checkpoint: `<prefix>/data.pkl` and one entry
/// `<prefix>/data/<key>` per storage.
pub fn read_zip(path: &Path) -> Result<Vec<DwLayer>> {
    let mut archive = open_zip(path)?;
    zip_tensors(&mut archive, DwTensor::select, DwTensor::layer).map_err(|message| Error::invalid(path, message))
}

/// Every float tensor of a zip checkpoint's state dict, in the dict's order.
pub fn read_zip_state_dict(path: &Path) -> Result<Vec<NamedTensor>> {
    let mut archive = open_zip(path)?;
    zip_tensors(&mut archive, is_float, named_tensor).map_err(|message| Error::invalid(path, message))
}

/// Reads a pre-1.6 checkpoint: the magic number, protocol version and system
/// info pickles, the main pickle, the pickled list of storage keys, then per
/// key an 8-byte little-endian element count and the raw elements.
pub fn read_legacy(path: &Path) -> Result<Vec<DwLayer>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    legacy_tensors(&bytes, DwTensor::select, DwTensor::layer).map_err(|message| Error::invalid(path, message))
}

/// Every float tensor of a legacy checkpoint's state dict, in the dict's order.
pub fn read_legacy_state_dict(path: &Path) -> Result<Vec<NamedTensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    legacy_tensors(&bytes, is_float, named_tensor).map_err(|message| Error::invalid(path, message))
}

fn open_zip(path: &Path) -> Result<ZipArchive<File>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    ZipArchive::new(file)
        .map_err(|e| Error::invalid(path, format!("expected a zip archive, found an unreadable one ({e})")))
}

/// Picks tensors of the state dict by name and view (`Ok(None)` skips one).
type Select<T> = fn(String, TensorView) -> Result<Option<T>, String>;
/// Turns a picked tensor and the bytes of its storage into the result.
type Convert<T, R> = fn(&T, &[u8]) -> Result<R, String>;

/// A picked tensor: its name (for errors) and the view it reads its storage through.
trait Picked {
    fn name(&self) -> &str;
    fn view(&self) -> &TensorView;
}

fn pick<T>(tensors: Vec<(String, TensorView)>, select: Select<T>) -> Result<Vec<T>, String> {
    tensors.into_iter().filter_map(|(name, view)| select(name, view).transpose()).collect()
}

fn zip_tensors<T: Picked, R>(
    archive: &mut ZipArchive<File>,
    select: Select<T>,
    convert: Convert<T, R>,
) -> Result<Vec<R>, String> {
    let prefix = archive_prefix(archive)?;
    check_byte_order(archive, &prefix)?;
    let data_pkl = read_entry(archive, &format!("{prefix}data.pkl"))?;
    let (main, _) = pickle::load(&data_pkl, 0).map_err(|e| format!("{prefix}data.pkl: {e}"))?;
    let tensors = pick(state_dict_tensors(&main)?, select)?;

    // Tensors often share a storage; each is read once.
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(tensors.len());
    for tensor in &tensors {
        let storage = &tensor.view().storage;
        let bytes = match storages.entry(storage.key.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(
                zip_storage(archive, &prefix, storage).map_err(|e| format!("tensor `{}`: {e}", tensor.name()))?,
            ),
        };
        out.push(convert(tensor, bytes)?);
    }
    Ok(out)
}

/// The folder holding `data.pkl`, with its trailing slash: PyTorch names it
/// after the file it saved to, so it is found rather than assumed.
fn archive_prefix(archive: &ZipArchive<File>) -> Result<String, String> {
    archive
        .file_names()
        .find_map(|name| {
            let prefix = name.strip_suffix("data.pkl")?;
            let is_top_folder = prefix.is_empty() || prefix.find('/') == Some(prefix.len() - 1);
            is_top_folder.then(|| prefix.to_string())
        })
        .ok_or_else(|| {
            format!(
                "expected a PyTorch zip checkpoint holding `<name>/data.pkl`, found no data.pkl among {} entries",
                archive.len()
            )
        })
}

/// PyTorch >= 2.1 records the byte order of the storages; older files are
/// little-endian.
fn check_byte_order(archive: &mut ZipArchive<File>, prefix: &str) -> Result<(), String> {
    let name = format!("{prefix}byteorder");
    if archive.index_for_name(&name).is_none() {
        return Ok(());
    }
    let order = read_entry(archive, &name)?;
    match order.trim_ascii() {
        b"little" => Ok(()),
        other => Err(format!("expected little-endian storages, found byte order {:?}", String::from_utf8_lossy(other))),
    }
}

fn read_entry(archive: &mut ZipArchive<File>, name: &str) -> Result<Vec<u8>, String> {
    let mut entry = archive.by_name(name).map_err(|e| format!("expected archive entry `{name}`, found none ({e})"))?;
    let declared = entry.size();
    let mut bytes = Vec::new();
    // The declared size bounds what a corrupt or hostile entry can inflate to.
    entry.by_ref().take(declared).read_to_end(&mut bytes).map_err(|e| format!("entry `{name}`: {e}"))?;
    Ok(bytes)
}

fn zip_storage(archive: &mut ZipArchive<File>, prefix: &str, storage: &StorageRef) -> Result<Vec<u8>, String> {
    let name = format!("{prefix}data/{}", storage.key);
    let bytes = read_entry(archive, &name)?;
    let elem_size = storage_class(&storage.class)?.0;
    let expected = storage.numel.checked_mul(elem_size).ok_or("storage size overflows")?;
    if bytes.len() < expected {
        return Err(format!(
            "storage `{name}` is truncated: expected {expected} bytes for {} elements of {}, found {}",
            storage.numel,
            storage.class,
            bytes.len()
        ));
    }
    Ok(bytes)
}

fn legacy_tensors<T: Picked, R>(bytes: &[u8], select: Select<T>, convert: Convert<T, R>) -> Result<Vec<R>, String> {
    let (magic, pos) = pickle::load(bytes, 0)?;
    expect_int(&magic, LEGACY_MAGIC, "the legacy PyTorch magic number")?;
    let (version, pos) = pickle::load(bytes, pos)?;
    expect_int(&version, LEGACY_PROTOCOL_VERSION, "legacy protocol version 1001")?;
    let (sys_info, pos) = pickle::load(bytes, pos)?;
    check_little_endian(&sys_info)?;
    let (main, pos) = pickle::load(bytes, pos)?;
    let (key_list, pos) = pickle::load(bytes, pos)?;

    let tensors = pick(state_dict_tensors(&main)?, select)?;
    let classes = storage_classes(&main);
    // Every storage must be walked past to find the next; keeping a slice of each is free.
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    let mut pos = pos;
    for key in storage_keys(&key_list)? {
        let class = classes
            .get(&key)
            .ok_or_else(|| format!("storage `{key}` is listed but no tensor or storage in the pickle uses it"))?;
        let elem_size = storage_class(class).map_err(|e| format!("storage `{key}`: {e}"))?.0;
        let (data, next) = legacy_storage(bytes, pos, &key, elem_size)?;
        pos = next;
        storages.insert(key, data);
    }
    tensors
        .iter()
        .map(|tensor| {
            let key = &tensor.view().storage.key;
            let data = storages.get(key).ok_or_else(|| {
                format!("tensor `{}`: storage `{key}` is not in the file's storage list", tensor.name())
            })?;
            convert(tensor, data)
        })
        .collect()
}

fn expect_int(pickle: &Pickle, expected: i128, what: &str) -> Result<(), String> {
    match pickle.root().as_int() {
        Some(found) if found == expected => Ok(()),
        _ => Err(format!("expected {what}, found {}", pickle.describe(pickle.root()))),
    }
}

/// The system info pickle says whether the storages are little-endian.
fn check_little_endian(sys_info: &Pickle) -> Result<(), String> {
    let entries = dict_entries(sys_info, sys_info.root())
        .ok_or_else(|| format!("expected the legacy system info dict, found {}", sys_info.describe(sys_info.root())))?;
    match lookup(entries, "little_endian") {
        Some(Value::Bool(false)) => Err("expected little-endian storages, found a big-endian file".to_string()),
        _ => Ok(()),
    }
}

fn storage_keys(key_list: &Pickle) -> Result<Vec<String>, String> {
    let expected = || format!("expected the list of storage keys, found {}", key_list.describe(key_list.root()));
    key_list
        .sequence(key_list.root())
        .ok_or_else(expected)?
        .iter()
        .map(|key| key_string(key).ok_or_else(expected))
        .collect()
}

/// The storage class of every storage the main pickle mentions, by key: the
/// legacy layout gives only element counts, so skipping a storage needs its
/// element size.
fn storage_classes(main: &Pickle) -> HashMap<String, String> {
    main.nodes()
        .iter()
        .filter_map(|node| match node {
            Node::Persistent(id) => storage_ref(main, id).ok(),
            _ => None,
        })
        .map(|storage| (storage.key, storage.class))
        .collect()
}

/// The storage starting at `pos`: its bytes and where the next one starts.
fn legacy_storage<'a>(bytes: &'a [u8], pos: usize, key: &str, elem_size: usize) -> Result<(&'a [u8], usize), String> {
    let count: [u8; 8] =
        pos.checked_add(8).and_then(|end| bytes.get(pos..end)).and_then(|count| count.try_into().ok()).ok_or_else(
            || {
                format!(
                "storage `{key}`: expected an 8-byte element count at byte {pos}, found the end of the file ({} bytes)",
                bytes.len()
            )
            },
        )?;
    let count = u64::from_le_bytes(count);
    let start = pos + 8;
    let end = usize::try_from(count)
        .ok()
        .and_then(|n| n.checked_mul(elem_size))
        .and_then(|len| start.checked_add(len))
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            format!(
                "storage `{key}` is truncated: expected {count} elements of {elem_size} bytes from byte {start}, found a {}-byte file",
                bytes.len()
            )
        })?;
    Ok((&bytes[start..end], end))
}

/// Bytes per element of a storage class, and the element type of the float
/// classes that can hold weights.
fn storage_class(class: &str) -> Result<(usize, Option<ElemType>), String> {
    Ok(match class {
        "FloatStorage" => (4, Some(ElemType::F32)),
        "DoubleStorage" => (8, Some(ElemType::F64)),
        "HalfStorage" => (2, Some(ElemType::F16)),
        "BFloat16Storage" => (2, Some(ElemType::BF16)),
        "ComplexDoubleStorage" => (16, None),
        "LongStorage" | "ComplexFloatStorage" => (8, None),
        "IntStorage" | "QInt32Storage" => (4, None),
        "ShortStorage" => (2, None),
        "CharStorage" | "ByteStorage" | "BoolStorage" | "QInt8Storage" | "QUInt8Storage" | "QUInt4x2Storage"
        | "QUInt2x4Storage" | "UntypedStorage" => (1, None),
        _ => return Err(format!("expected a known PyTorch storage class, found `{class}`")),
    })
}

/// A storage as a persistent id names it.
struct StorageRef {
    key: String,
    /// `FloatStorage`, `HalfStorage`, ... (the module, `torch` or `torch.cuda`, does not matter).
    class: String,
    numel: usize,
    /// Legacy files only: the tensor sees `(offset, len)` elements of the storage.
    view: Option<(usize, usize)>,
}

/// A tensor as `_rebuild_tensor_v2` describes it.
struct TensorView {
    storage: StorageRef,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// The state dict's tensors with dotted names, in insertion order (the model's
/// order). Rule: the top-level dict's own tensors; if it has none, those of
/// the first preferred key holding a dict with tensors; else those of the
/// first nested dict with tensors.
fn state_dict_tensors(main: &Pickle) -> Result<Vec<(String, TensorView)>, String> {
    let root = main.root();
    let top = dict_entries(main, root)
        .ok_or_else(|| format!("expected a state dict (a dict of tensors), found {}", main.describe(root)))?;
    let tensors = named_tensors(main, top)?;
    if !tensors.is_empty() {
        return Ok(tensors);
    }
    for key in PREFERRED_KEYS {
        if let Some(entries) = lookup(top, key).and_then(|value| dict_entries(main, value)) {
            let tensors = named_tensors(main, entries)?;
            if !tensors.is_empty() {
                return Ok(tensors);
            }
        }
    }
    let mut visited = HashSet::new();
    if let Some(tensors) = first_nested_tensors(main, top, 0, &mut visited)? {
        return Ok(tensors);
    }
    let keys: Vec<&str> = top.iter().filter_map(|(k, _)| k.as_str()).take(10).collect();
    Err(format!("expected a state dict of tensors, found a dict without tensors at any level (keys {keys:?})"))
}

/// Depth-first, in insertion order; each dict is looked at once, so shared
/// or cyclic structures cost no more than their size.
fn first_nested_tensors(
    main: &Pickle,
    entries: &[(Value, Value)],
    depth: usize,
    visited: &mut HashSet<usize>,
) -> Result<Option<Vec<(String, TensorView)>>, String> {
    if depth >= MAX_NESTING {
        return Ok(None);
    }
    for (_, value) in entries {
        let Value::Node(id) = value else { continue };
        let Some(nested) = dict_entries(main, value) else { continue };
        if !visited.insert(*id) {
            continue;
        }
        let tensors = named_tensors(main, nested)?;
        if !tensors.is_empty() {
            return Ok(Some(tensors));
        }
        if let Some(tensors) = first_nested_tensors(main, nested, depth + 1, visited)? {
            return Ok(Some(tensors));
        }
    }
    Ok(None)
}

/// A plain dict's entries, or those set on an object used as a mapping
/// (`collections.OrderedDict()` followed by SETITEMS).
fn dict_entries<'p>(pickle: &'p Pickle, value: &Value) -> Option<&'p [(Value, Value)]> {
    match pickle.node(value)? {
        Node::Dict(entries) => Some(entries),
        Node::Call(call) => Some(&call.items),
        _ => None,
    }
}

/// The last value set for a string key, as a Python dict would keep it.
fn lookup<'e>(entries: &'e [(Value, Value)], key: &str) -> Option<&'e Value> {
    entries.iter().rev().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
}

/// Tensors under string keys, first-insertion order, last value wins (dict semantics).
fn named_tensors(main: &Pickle, entries: &[(Value, Value)]) -> Result<Vec<(String, TensorView)>, String> {
    let mut tensors: Vec<(String, TensorView)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (key, value) in entries {
        let Some(name) = key.as_str() else { continue };
        let Some(view) = tensor_view(main, value).map_err(|e| format!("tensor `{name}`: {e}"))? else { continue };
        match index.get(name) {
            Some(&i) => tensors[i].1 = view,
            None => {
                index.insert(name, tensors.len());
                tensors.push((name.to_string(), view));
            }
        }
    }
    Ok(tensors)
}

/// The tensor a value rebuilds, unwrapping `Parameter`s; `None` for anything
/// that is not a tensor.
fn tensor_view(main: &Pickle, value: &Value) -> Result<Option<TensorView>, String> {
    let mut value = value;
    for _ in 0..MAX_NESTING {
        let Some(call) = main.call(value) else { return Ok(None) };
        let args = main.sequence(&call.args);
        match main.global(&call.callable) {
            Some(("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor")) => {
                let args =
                    args.ok_or_else(|| format!("expected tensor arguments, found {}", main.describe(&call.args)))?;
                return rebuild_tensor(main, args).map(Some);
            }
            Some(("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state")) => {
                value =
                    args.and_then(|a| a.first()).ok_or("expected a parameter wrapping a tensor, found no arguments")?;
            }
            _ => return Ok(None),
        }
    }
    Err(format!("expected a tensor, found parameters nested more than {MAX_NESTING} deep"))
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
fn rebuild_tensor(main: &Pickle, args: &[Value]) -> Result<TensorView, String> {
    let [storage, offset, size, stride, ..] = args else {
        return Err(format!("expected at least 4 arguments (storage, offset, size, stride), found {}", args.len()));
    };
    let storage = match main.node(storage) {
        Some(Node::Persistent(id)) => storage_ref(main, id)?,
        _ => return Err(format!("expected a storage (persistent id), found {}", main.describe(storage))),
    };
    let offset =
        as_usize(offset).ok_or_else(|| format!("expected a storage offset, found {}", main.describe(offset)))?;
    let size = usizes(main, size, "size")?;
    let stride = usizes(main, stride, "stride")?;
    if size.len() != stride.len() {
        return Err(format!("expected as many strides as dimensions ({}), found {}", size.len(), stride.len()));
    }
    Ok(TensorView { storage, offset, size, stride })
}

/// `('storage', class, key, location, numel)`, plus `view_metadata` (None or
/// `(view_key, offset, len)`) in legacy files.
fn storage_ref(main: &Pickle, id: &Value) -> Result<StorageRef, String> {
    let malformed =
        || format!("expected a storage id ('storage', class, key, location, numel), found {}", main.describe(id));
    let items = main.sequence(id).ok_or_else(malformed)?;
    let [tag, class, key, _location, numel, view @ ..] = items else { return Err(malformed()) };
    if tag.as_str() != Some("storage") {
        return Err(malformed());
    }
    let (_, class) =
        main.global(class).ok_or_else(|| format!("expected a storage class, found {}", main.describe(class)))?;
    let key = key_string(key).ok_or_else(|| format!("expected a storage key, found {}", main.describe(key)))?;
    let numel = as_usize(numel).ok_or_else(|| format!("expected an element count, found {}", main.describe(numel)))?;
    let view = match view {
        [] | [Value::None] => None,
        [view] => Some(view_range(main, view)?),
        _ => return Err(malformed()),
    };
    Ok(StorageRef { key, class: class.to_string(), numel, view })
}

fn view_range(main: &Pickle, view: &Value) -> Result<(usize, usize), String> {
    match main.sequence(view) {
        Some([_view_key, offset, len]) => match (as_usize(offset), as_usize(len)) {
            (Some(offset), Some(len)) => Ok((offset, len)),
            _ => {
                Err("expected a storage view (key, offset, size) of non-negative ints, found other values".to_string())
            }
        },
        _ => Err(format!("expected a storage view (key, offset, size), found {}", main.describe(view))),
    }
}

fn key_string(key: &Value) -> Option<String> {
    match key {
        Value::Str(s) => Some(s.to_string()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn as_usize(value: &Value) -> Option<usize> {
    value.as_int().and_then(|i| usize::try_from(i).ok())
}

fn usizes(main: &Pickle, value: &Value, what: &str) -> Result<Vec<usize>, String> {
    let expected = || format!("expected a {what} tuple of non-negative ints, found {}", main.describe(value));
    main.sequence(value).ok_or_else(expected)?.iter().map(|v| as_usize(v).ok_or_else(expected)).collect()
}

/// A tensor of depthwise shape, with what its layer will be.
struct DwTensor {
    name: String,
    channels: usize,
    kernel: KernelSize,
    view: TensorView,
}

impl Picked for DwTensor {
    fn name(&self) -> &str {
        &self.name
    }
    fn view(&self) -> &TensorView {
        &self.view
    }
}

impl DwTensor {
    fn select(name: String, view: TensorView) -> Result<Option<Self>, String> {
        Ok(named::dw_shape(&name, &view.size).map(|(channels, kernel)| DwTensor { name, channels, kernel, view }))
    }

    /// `[C, 1, kh, kw]` in row-major order is already the project's layout.
    fn layer(&self, storage_bytes: &[u8]) -> Result<DwLayer, String> {
        let weights = self.view.values(storage_bytes).map_err(|e| format!("tensor `{}`: {e}", self.name))?;
        DwLayer::new(self.name.as_str(), self.kernel, self.channels, weights)
    }
}

impl Picked for (String, TensorView) {
    fn name(&self) -> &str {
        &self.0
    }
    fn view(&self) -> &TensorView {
        &self.1
    }
}

/// Keeps tensors of float storage classes (weights, biases, BN statistics);
/// integer buffers such as BN's `num_batches_tracked` are left out.
fn is_float(name: String, view: TensorView) -> Result<Option<(String, TensorView)>, String> {
    let (_, elem) = storage_class(&view.storage.class).map_err(|e| format!("tensor `{name}`: {e}"))?;
    Ok(elem.map(|_| (name, view)))
}

fn named_tensor((name, view): &(String, TensorView), storage_bytes: &[u8]) -> Result<NamedTensor, String> {
    let values = view.values(storage_bytes).map_err(|e| format!("tensor `{name}`: {e}"))?;
    Ok(NamedTensor { name: name.clone(), shape: view.size.clone(), values })
}

impl TensorView {
    /// The tensor's elements in row-major order, gathered element by element
    /// along the strides from the storage's bytes and converted to f32.
    fn values(&self, storage_bytes: &[u8]) -> Result<Vec<f32>, String> {
        let TensorView { storage, offset, size, stride } = self;
        let (elem_size, elem) = storage_class(&storage.class)?;
        let elem = elem.ok_or_else(|| {
            format!("expected float weights (f32, f16, bf16, f64), found storage class {}", storage.class)
        })?;
        if size.contains(&0) {
            return Ok(Vec::new());
        }
        let (base, len) = visible_elements(storage, storage_bytes.len() / elem_size)?;
        let end = view_end(*offset, size, stride).filter(|&end| end <= len).ok_or_else(|| {
            format!(
                "offset {offset} with size {size:?} and stride {stride:?} reaches past the {len} elements of storage `{}`",
                storage.key
            )
        })?;
        let values = dtype::decode(elem, storage_bytes, base + offset, end - offset)?;
        Ok(gather(&values, size, stride))
    }
}

/// The first element and count of the storage elements a tensor may read:
/// the whole storage, or the legacy view into it.
fn visible_elements(storage: &StorageRef, available: usize) -> Result<(usize, usize), String> {
    match storage.view {
        None => Ok((0, available)),
        Some((offset, len)) if offset.checked_add(len).is_some_and(|end| end <= available) => Ok((offset, len)),
        Some((offset, len)) => Err(format!(
            "storage view of {len} elements at {offset} runs past the {available} elements of storage `{}`",
            storage.key
        )),
    }
}

/// One past the last element a strided view of non-empty sizes reads, or
/// `None` on overflow.
fn view_end(offset: usize, size: &[usize], stride: &[usize]) -> Option<usize> {
    size.iter()
        .zip(stride)
        .try_fold(offset.checked_add(1)?, |end, (&n, &s)| end.checked_add(n.checked_sub(1)?.checked_mul(s)?))
}

/// The elements of a strided view in row-major order, from the values
/// decoded from its storage offset on; `view_end` has checked that every
/// index is within `values`. A 0-dimensional tensor is its one element.
fn gather(values: &[f32], size: &[usize], stride: &[usize]) -> Vec<f32> {
    let Some((&inner_len, outer)) = size.split_last() else { return vec![values[0]] };
    let inner_stride = stride[outer.len()];
    let mut out = Vec::with_capacity(size.iter().product());
    let mut index = vec![0usize; outer.len()];
    loop {
        let start: usize = index.iter().zip(stride).map(|(i, s)| i * s).sum();
        out.extend((0..inner_len).map(|j| values[start + j * inner_stride]));
        // Advance the outer index like an odometer, last axis fastest.
        let mut axis = outer.len();
        loop {
            if axis == 0 {
                return out;
            }
            axis -= 1;
            index[axis] += 1;
            if index[axis] < outer[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
}
