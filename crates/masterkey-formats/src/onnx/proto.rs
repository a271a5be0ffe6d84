//! The subset of the ONNX protobuf schema (`onnx/onnx.proto` of onnx/onnx)
//! that the reader needs, with the schema's own field numbers.
//!
//! Hand-declared prost messages avoid a protoc build dependency (no build
//! script, no generated code). Fields not declared here are skipped by prost
//! while decoding, so the rest of a model costs nothing but the parse.
//!
//! `onnx.proto` is proto2; its optional scalars are declared here as plain
//! scalars whose absence reads as the default (0, empty), which is the meaning
//! ONNX gives an absent field anyway.

/// `ModelProto`: the file's top-level message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// Always present, and written first: it is what makes an ONNX file start
    /// with the byte 0x08 that format detection relies on.
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
}

/// `GraphProto`: nodes in topological order plus the constant tensors.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
}

/// `NodeProto`: one operator application.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

/// `AttributeProto`: only the value kinds the reader looks at (an integer such
/// as `group`, a tensor such as a Constant's `value`, and subgraphs).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(message, optional, tag = "6")]
    pub g: Option<GraphProto>,
    #[prost(message, repeated, tag = "11")]
    pub graphs: Vec<GraphProto>,
}

/// `TensorProto`: a constant tensor, its elements in row-major order in
/// `raw_data` (little-endian) or in the typed field for its `data_type`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    /// `TensorProto.DataType`: FLOAT = 1, FLOAT16 = 10, DOUBLE = 11, BFLOAT16 = 16.
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    /// Holds INT32 and the narrower integer types, and the bit patterns of
    /// FLOAT16 / BFLOAT16 elements (one per entry, in the low 16 bits).
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    /// `DataLocation`: DEFAULT = 0, EXTERNAL = 1.
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

/// `StringStringEntryProto`: ONNX's map entry (used by `external_data`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}
