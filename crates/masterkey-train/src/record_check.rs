//! burn reads a record's parameters with functions that panic on input it
//! did not write itself (`ParamId::deserialize` expects a valid id; tensor
//! bytes that do not fill their shape fail later, in the backend). So a
//! checkpoint's MessagePack is first read here as plain values and every
//! parameter checked before burn sees the bytes. Hand-written: the check
//! needs only the value tree, and reading into our own type keeps every
//! allocation to what the bytes hold (no capacity taken from a declared
//! length).

use std::fmt;

use burn::module::ParamId;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A MessagePack value, as far as the check needs it.
enum Value {
    Text(String),
    /// The length of a binary value.
    Binary(usize),
    Unsigned(u64),
    List(Vec<Value>),
    Map(Vec<(Value, Value)>),
    /// Booleans, nil, signed and float numbers.
    Scalar,
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a MessagePack value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Scalar)
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(u64::try_from(v).map_or(Value::Scalar, Value::Unsigned))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Unsigned(v))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Scalar)
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Text(v.to_string()))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Binary(v.len()))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Scalar)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Scalar)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Value::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

fn field<'a>(entries: &'a [(Value, Value)], name: &str) -> Option<&'a Value> {
    entries.iter().find_map(|(k, v)| matches!(k, Value::Text(t) if t == name).then_some(v))
}

/// The ids masterkey writes: 8 bytes in burn's base32 (13 characters of
/// `0-9a-v`), which burn decodes without panicking.
fn check_id(id: &Value) -> Result<(), String> {
    let Value::Text(id) = id else { return Err("expected a parameter id as text".into()) };
    let alphabet = |c: u8| c.is_ascii_digit() || (b'a'..=b'v').contains(&c);
    if id.len() > 13 || !id.bytes().all(alphabet) || ParamId::try_deserialize(id).is_none() {
        return Err(format!("expected a parameter id of up to 13 base32 characters, found `{id}`"));
    }
    Ok(())
}

/// f32 tensor data: `shape` (unsigned) and exactly `4 * product(shape)` bytes.
fn check_tensor(entries: &[(Value, Value)]) -> Result<(), String> {
    match field(entries, "dtype") {
        Some(Value::Text(t)) if t == "F32" => {}
        _ => return Err("expected f32 tensor data (dtype F32)".into()),
    }
    let Some(Value::List(dims)) = field(entries, "shape") else {
        return Err("expected a tensor shape as a list".into());
    };
    let mut count = Some(1u64);
    for dim in dims {
        let Value::Unsigned(d) = dim else { return Err("expected a tensor shape of unsigned sizes".into()) };
        count = count.and_then(|c| c.checked_mul(*d));
    }
    let bytes = match field(entries, "bytes") {
        Some(Value::Binary(len)) => *len as u64,
        Some(Value::List(b)) => b.len() as u64,
        _ => return Err("expected the tensor's bytes".into()),
    };
    if count.and_then(|c| c.checked_mul(4)) != Some(bytes) {
        return Err(format!("expected 4 bytes per element of a {} tensor, found {bytes} bytes", dims.len()));
    }
    Ok(())
}

fn check(value: &Value) -> Result<(), String> {
    match value {
        Value::Map(entries) => {
            if let (Some(id), Some(_)) = (field(entries, "id"), field(entries, "param")) {
                check_id(id)?;
            }
            if field(entries, "dtype").is_some() && field(entries, "shape").is_some() {
                check_tensor(entries)?;
            }
            entries.iter().try_for_each(|(_, v)| check(v))
        }
        Value::List(items) => items.iter().try_for_each(check),
        Value::Text(_) | Value::Binary(_) | Value::Unsigned(_) | Value::Scalar => Ok(()),
    }
}

/// Checks that `bytes`, burn's named MessagePack record, holds only
/// parameters burn can read without panicking.
pub fn check_record(bytes: &[u8]) -> Result<(), String> {
    let value: Value = rmp_serde::from_slice(bytes).map_err(|e| format!("expected MessagePack: {e}"))?;
    check(&value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct Param<'a> {
        id: &'a str,
        param: Tensor<'a>,
    }

    #[derive(serde::Serialize)]
    struct Tensor<'a> {
        #[serde(with = "serde_bytes_as_bin")]
        bytes: &'a [u8],
        shape: Vec<u64>,
        dtype: &'a str,
    }

    mod serde_bytes_as_bin {
        pub fn serialize<S: serde::Serializer>(b: &&[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(b)
        }
    }

    fn record(id: &str, bytes: &[u8], shape: Vec<u64>, dtype: &str) -> Vec<u8> {
        let p = Param { id, param: Tensor { bytes, shape, dtype } };
        rmp_serde::to_vec_named(&[("weight", p)]).unwrap()
    }

    #[test]
    fn parameters_burn_would_panic_on_are_refused() {
        let good_id = ParamId::new().serialize();
        assert!(check_record(&record(&good_id, &[0; 24], vec![2, 3], "F32")).is_ok());
        let err = check_record(&record("zzzz", &[0; 24], vec![2, 3], "F32")).unwrap_err();
        assert!(err.contains("parameter id"), "{err}");
        // Base32 of more than 8 bytes makes burn's decoder index out of bounds.
        let err = check_record(&record("0123456789abcdef", &[0; 24], vec![2, 3], "F32")).unwrap_err();
        assert!(err.contains("parameter id"), "{err}");
        let err = check_record(&record(&good_id, &[0; 23], vec![2, 3], "F32")).unwrap_err();
        assert!(err.contains("found 23 bytes"), "{err}");
        let err = check_record(&record(&good_id, &[0; 24], vec![u64::MAX, 3], "F32")).unwrap_err();
        assert!(err.contains("4 bytes per element"), "{err}");
        assert!(check_record(&record(&good_id, &[0; 48], vec![2, 3], "F64")).unwrap_err().contains("F32"));
        assert!(check_record(b"\xc1").unwrap_err().contains("MessagePack"));
    }
}
