//! Decoding of little-endian tensor payloads to f32.

/// Element types that depthwise weights are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemType {
    F32,
    F64,
    F16,
    BF16,
}

impl ElemType {
    pub fn size(self) -> usize {
        match self {
            ElemType::F32 => 4,
            ElemType::F64 => 8,
            ElemType::F16 | ElemType::BF16 => 2,
        }
    }
}

/// Decodes `count` elements starting at element `offset` of `bytes`, or says
/// how many bytes were needed and how many there were.
pub fn decode(elem: ElemType, bytes: &[u8], offset: usize, count: usize) -> Result<Vec<f32>, String> {
    let size = elem.size();
    let start = offset.checked_mul(size).ok_or("element offset overflows")?;
    let end = offset.checked_add(count).and_then(|e| e.checked_mul(size)).ok_or("element range overflows")?;
    let slice =
        bytes.get(start..end).ok_or_else(|| format!("expected {end} bytes of {elem:?} data, found {}", bytes.len()))?;
    Ok(match elem {
        ElemType::F32 => slice.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        ElemType::F64 => {
            slice.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect()
        }
        ElemType::F16 => slice.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        ElemType::BF16 => slice.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
    })
}
