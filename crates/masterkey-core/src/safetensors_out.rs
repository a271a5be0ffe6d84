//! safetensors files whose bytes depend only on their content.
//!
//! The `safetensors` crate takes the header metadata as a `HashMap` and
//! writes it in the map's (randomly seeded) iteration order, so two runs that
//! save the same bank wrote different bytes. Here the header is rewritten
//! with every object's keys in sorted order; tensor data and offsets are
//! untouched (offsets count from the end of the header).

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::TensorView;
use serde_json::{Map, Value};

/// `tensors` and `metadata` as safetensors bytes, header keys sorted.
pub fn serialize_sorted(
    tensors: Vec<(&str, TensorView<'_>)>,
    metadata: Option<BTreeMap<String, String>>,
) -> Result<Vec<u8>, String> {
    let metadata: Option<HashMap<String, String>> = metadata.map(|m| m.into_iter().collect());
    let bytes = safetensors::serialize(tensors, metadata).map_err(|e| e.to_string())?;
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes of header length")) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).map_err(|e| e.to_string())?;
    let mut sorted = serde_json::to_vec(&sort_keys(header)).map_err(|e| e.to_string())?;
    // The data that follows starts at a multiple of 8, as safetensors aligns it.
    sorted.resize(sorted.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + sorted.len() + bytes.len() - 8 - header_len);
    out.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
    out.extend_from_slice(&sorted);
    out.extend_from_slice(&bytes[8 + header_len..]);
    Ok(out)
}

/// `value` with the keys of every object in sorted order (whether or not
/// serde_json keeps insertion order in this build).
fn sort_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<String, Value> = map.into_iter().map(|(k, v)| (k, sort_keys(v))).collect();
            Value::Object(sorted.into_iter().collect::<Map<String, Value>>())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::{Dtype, SafeTensors};

    #[test]
    fn same_content_same_bytes_and_the_file_reads_back() {
        let (a, b): (Vec<u8>, Vec<u8>) = ((0u8..24).collect(), (100u8..108).collect());
        let metadata: BTreeMap<String, String> = (0..20).map(|i| (format!("key{i}"), format!("value {i}"))).collect();
        let write = || {
            let views = vec![
                ("zeta", TensorView::new(Dtype::F32, vec![2, 3], &a).unwrap()),
                ("alpha", TensorView::new(Dtype::F32, vec![2], &b).unwrap()),
            ];
            serialize_sorted(views, Some(metadata.clone())).unwrap()
        };
        let first = write();
        // A fresh HashMap per call draws fresh iteration orders.
        for _ in 0..10 {
            assert_eq!(write(), first);
        }
        let header_len = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + header_len) % 8, 0);
        let header = std::str::from_utf8(&first[8..8 + header_len]).unwrap();
        assert!(header.find("\"key0\"").unwrap() < header.find("\"key1\"").unwrap(), "{header}");
        let read = SafeTensors::deserialize(&first).unwrap();
        assert_eq!(read.tensor("zeta").unwrap().data(), &a[..]);
        assert_eq!(read.tensor("alpha").unwrap().data(), &b[..]);
        let (_, meta) = SafeTensors::read_metadata(&first).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap().get("key7").map(String::as_str), Some("value 7"));
    }
}
