//! A small pickle reader (protocols 2 to 5), enough for PyTorch checkpoints.
//!
//! Hand-written because no maintained Rust crate decodes PyTorch's pickles —
//! persistent ids standing for storages, `GLOBAL` + `REDUCE` rebuilding
//! tensors — safely: they either reject those opcodes or expect the caller to
//! resolve them while loading. Nothing here is ever executed: `REDUCE` and
//! `NEWOBJ` only record which global was called with which arguments, and a
//! persistent id is kept as the value the pickler wrote; the caller
//! interprets both afterwards.
//!
//! The input may be hostile. Every read is bounds-checked, every opcode does a
//! bounded amount of work, values are shared and never deep-copied (a memo
//! entry fetched a million times costs a million handles, not a million
//! copies), and containers live in an arena of nodes that refer to each other
//! by index, so that neither dropping nor mutating a deep or cyclic structure
//! recurses.

use std::collections::HashMap;
use std::rc::Rc;

/// Index of a node in `Pickle::nodes`.
pub type NodeId = usize;

/// A value on the pickle machine's stack. Cheap to clone.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    /// Wide enough for the 80-bit magic number of legacy PyTorch files.
    Int(i128),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    /// A container, global, call or persistent id, held in the arena.
    Node(NodeId),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i128> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// Everything a value can refer to that may be shared or mutated after it
/// was pushed (and so, in Python, has an identity).
#[derive(Debug)]
pub enum Node {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// A set or frozenset, in the order the pickle listed its items.
    Set(Vec<Value>),
    /// Entries in insertion order; a repeated key is kept twice, readers
    /// that care take the last one.
    Dict(Vec<(Value, Value)>),
    Global {
        module: String,
        name: String,
    },
    Call(Call),
    /// What BINPERSID received: the id the pickler wrote in place of an
    /// object it stored elsewhere (for PyTorch, a storage).
    Persistent(Value),
}

/// `callable(*args)` as REDUCE or NEWOBJ asked for it, with the items later
/// set on the object it would have returned. What APPEND(S) and BUILD do to
/// such an object is dropped: no PyTorch reader needs it (BUILD only attaches
/// a state dict's `_metadata`).
#[derive(Debug)]
pub struct Call {
    pub callable: Value,
    pub args: Value,
    /// Set by SETITEM(S): the result is used as a mapping (e.g. `OrderedDict`).
    pub items: Vec<(Value, Value)>,
}

/// One unpickled object: its root value and the arena its nodes live in.
#[derive(Debug)]
pub struct Pickle {
    nodes: Vec<Node>,
    root: Value,
}

impl Pickle {
    pub fn root(&self) -> &Value {
        &self.root
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, value: &Value) -> Option<&Node> {
        match value {
            Value::Node(id) => self.nodes.get(*id),
            _ => None,
        }
    }

    /// The items of a tuple or list.
    pub fn sequence(&self, value: &Value) -> Option<&[Value]> {
        match self.node(value)? {
            Node::Tuple(items) | Node::List(items) => Some(items),
            _ => None,
        }
    }

    /// `(module, name)` of a global.
    pub fn global(&self, value: &Value) -> Option<(&str, &str)> {
        match self.node(value)? {
            Node::Global { module, name } => Some((module, name)),
            _ => None,
        }
    }

    pub fn call(&self, value: &Value) -> Option<&Call> {
        match self.node(value)? {
            Node::Call(call) => Some(call),
            _ => None,
        }
    }

    /// A short description for error messages; never walks into containers.
    pub fn describe(&self, value: &Value) -> String {
        match self.node(value) {
            Some(Node::Tuple(items)) => format!("a tuple of {} items", items.len()),
            Some(Node::List(items)) => format!("a list of {} items", items.len()),
            Some(Node::Set(items)) => format!("a set of {} items", items.len()),
            Some(Node::Dict(entries)) => format!("a dict of {} entries", entries.len()),
            Some(Node::Global { module, name }) => format!("global {module}.{name}"),
            Some(Node::Call(call)) => match self.global(&call.callable) {
                Some((module, name)) => format!("a call to {module}.{name}"),
                None => "a call".to_string(),
            },
            Some(Node::Persistent(_)) => "a persistent id".to_string(),
            None => describe_leaf(value),
        }
    }
}

/// Describes a value without looking into the arena.
fn describe_leaf(value: &Value) -> String {
    match value {
        Value::None => "None".to_string(),
        Value::Bool(b) => format!("bool {b}"),
        Value::Int(i) => format!("int {i}"),
        Value::Float(f) => format!("float {f}"),
        Value::Str(s) => format!("str {:?}", truncated(s, 40)),
        Value::Bytes(b) => format!("{} bytes", b.len()),
        Value::Node(_) => "an object".to_string(),
    }
}

fn truncated(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_string(),
    }
}

/// Unpickles the object that starts at byte `start` of `bytes`; returns it and
/// the offset just past its STOP, where the next pickle (or other data) begins.
/// Errors say which opcode at which byte failed, what was expected and what was
/// found.
pub fn load(bytes: &[u8], start: usize) -> Result<(Pickle, usize), String> {
    let mut machine =
        Machine { bytes, pos: start, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), nodes: Vec::new() };
    loop {
        let at = machine.pos;
        let Some(&opcode) = bytes.get(at) else {
            return Err(format!("expected a pickle opcode at byte {at}, found the end of the data (no STOP)"));
        };
        machine.pos += 1;
        match machine.step(opcode) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Stop(root)) => return Ok((Pickle { nodes: machine.nodes, root }, machine.pos)),
            Err(e) => return Err(format!("pickle opcode 0x{opcode:02x} at byte {at}: {e}")),
        }
    }
}

/// The opcodes this reader knows (see Python's `pickletools`).
mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const BINFLOAT: u8 = b'G';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINUNICODE: u8 = b'X';
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const EMPTY_LIST: u8 = b']';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const APPENDS: u8 = b'e';
    pub const GET: u8 = b'g';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const PUT: u8 = b'p';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const SETITEMS: u8 = b'u';
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const EMPTY_SET: u8 = 0x8f;
    pub const ADDITEMS: u8 = 0x90;
    pub const FROZENSET: u8 = 0x91;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
    pub const BYTEARRAY8: u8 = 0x96;
}

/// The newest pickle protocol this reader accepts.
const HIGHEST_PROTOCOL: u8 = 5;

/// Integers wider than this are not needed by PyTorch and are refused.
const MAX_INT_BYTES: usize = 16;

enum Flow {
    Continue,
    Stop(Value),
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack lengths at each open MARK; values below the innermost one cannot
    /// be popped, as in Python's separate per-MARK stacks.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    nodes: Vec<Node>,
}

impl<'a> Machine<'a> {
    fn step(&mut self, opcode: u8) -> Result<Flow, String> {
        match opcode {
            op::PROTO => self.protocol()?,
            op::FRAME => {
                // Frames only help buffered readers; the opcodes inside follow.
                self.take(8)?;
            }
            op::STOP => return Ok(Flow::Stop(self.pop()?)),
            op::MARK => self.marks.push(self.stack.len()),
            op::POP => {
                if self.stack.len() > self.floor() {
                    self.stack.pop();
                } else {
                    self.pop_mark()?;
                }
            }
            op::POP_MARK => {
                self.pop_mark()?;
            }
            op::DUP => self.stack.push(self.top()?.clone()),
            op::NONE => self.stack.push(Value::None),
            op::NEWTRUE => self.stack.push(Value::Bool(true)),
            op::NEWFALSE => self.stack.push(Value::Bool(false)),
            op::BININT => {
                let v = i32::from_le_bytes(self.array()?);
                self.stack.push(Value::Int(v.into()));
            }
            op::BININT1 => {
                let v = self.u8()?;
                self.stack.push(Value::Int(v.into()));
            }
            op::BININT2 => {
                let v = u16::from_le_bytes(self.array()?);
                self.stack.push(Value::Int(v.into()));
            }
            op::LONG1 => {
                let len = usize::from(self.u8()?);
                self.long(len)?;
            }
            op::LONG4 => {
                let len = i32::from_le_bytes(self.array()?);
                let len = usize::try_from(len).map_err(|_| format!("expected a non-negative length, found {len}"))?;
                self.long(len)?;
            }
            op::BINFLOAT => {
                let v = f64::from_be_bytes(self.array()?);
                self.stack.push(Value::Float(v));
            }
            op::SHORT_BINUNICODE | op::SHORT_BINSTRING => {
                let len = usize::from(self.u8()?);
                self.string(len)?;
            }
            op::BINUNICODE => {
                let len = u32::from_le_bytes(self.array()?);
                self.string(to_usize(len.into())?)?;
            }
            op::BINSTRING => {
                let len = i32::from_le_bytes(self.array()?);
                let len = usize::try_from(len).map_err(|_| format!("expected a non-negative length, found {len}"))?;
                self.string(len)?;
            }
            op::BINUNICODE8 => {
                let len = u64::from_le_bytes(self.array()?);
                self.string(to_usize(len)?)?;
            }
            op::SHORT_BINBYTES => {
                let len = usize::from(self.u8()?);
                self.byte_string(len)?;
            }
            op::BINBYTES => {
                let len = u32::from_le_bytes(self.array()?);
                self.byte_string(to_usize(len.into())?)?;
            }
            op::BINBYTES8 | op::BYTEARRAY8 => {
                let len = u64::from_le_bytes(self.array()?);
                self.byte_string(to_usize(len)?)?;
            }
            op::EMPTY_TUPLE => self.push_node(Node::Tuple(Vec::new())),
            op::TUPLE => {
                let items = self.pop_mark()?;
                self.push_node(Node::Tuple(items));
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let items = self.pop_n(usize::from(opcode - op::TUPLE1 + 1))?;
                self.push_node(Node::Tuple(items));
            }
            op::EMPTY_LIST => self.push_node(Node::List(Vec::new())),
            op::LIST => {
                let items = self.pop_mark()?;
                self.push_node(Node::List(items));
            }
            op::APPEND => {
                let item = self.pop()?;
                self.append(vec![item])?;
            }
            op::APPENDS => {
                let items = self.pop_mark()?;
                self.append(items)?;
            }
            op::EMPTY_DICT => self.push_node(Node::Dict(Vec::new())),
            op::DICT => {
                let entries = pairs(self.pop_mark()?)?;
                self.push_node(Node::Dict(entries));
            }
            op::SETITEM => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.set_items(vec![(key, value)])?;
            }
            op::SETITEMS => {
                let entries = pairs(self.pop_mark()?)?;
                self.set_items(entries)?;
            }
            op::EMPTY_SET => self.push_node(Node::Set(Vec::new())),
            op::FROZENSET => {
                let items = self.pop_mark()?;
                self.push_node(Node::Set(items));
            }
            op::ADDITEMS => {
                let items = self.pop_mark()?;
                match self.top_node_mut()? {
                    Node::Set(set) => set.extend(items),
                    _ => return Err("expected a set to add items to, found another object".to_string()),
                }
            }
            op::GLOBAL => {
                let module = self.line()?.to_string();
                let name = self.line()?.to_string();
                self.push_node(Node::Global { module, name });
            }
            op::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module.as_str(), name.as_str()) {
                    (Some(module), Some(name)) => {
                        let (module, name) = (module.to_string(), name.to_string());
                        self.push_node(Node::Global { module, name });
                    }
                    _ => return Err("expected two strings (module, name) on the stack, found other values".to_string()),
                }
            }
            op::REDUCE | op::NEWOBJ => {
                let args = self.pop()?;
                let callable = self.pop()?;
                self.push_node(Node::Call(Call { callable, args, items: Vec::new() }));
            }
            op::BUILD => {
                self.pop()?;
                if !matches!(self.top_node_mut()?, Node::Call(_)) {
                    return Err("expected an object built by REDUCE or NEWOBJ to set the state of, found a container"
                        .to_string());
                }
            }
            op::BINPERSID => {
                let id = self.pop()?;
                self.push_node(Node::Persistent(id));
            }
            op::BINPUT => {
                let index = self.u8()?;
                self.memo_put(index.into())?;
            }
            op::LONG_BINPUT => {
                let index = u32::from_le_bytes(self.array()?);
                self.memo_put(index)?;
            }
            op::PUT => {
                let index = self.decimal_line()?;
                self.memo_put(index)?;
            }
            op::MEMOIZE => {
                let index = u32::try_from(self.memo.len()).map_err(|_| "memo is full".to_string())?;
                self.memo_put(index)?;
            }
            op::BINGET => {
                let index = self.u8()?;
                self.memo_get(index.into())?;
            }
            op::LONG_BINGET => {
                let index = u32::from_le_bytes(self.array()?);
                self.memo_get(index)?;
            }
            op::GET => {
                let index = self.decimal_line()?;
                self.memo_get(index)?;
            }
            _ => return Err("unknown (expected an opcode of pickle protocols 2 to 5 that PyTorch uses)".to_string()),
        }
        Ok(Flow::Continue)
    }

    fn protocol(&mut self) -> Result<(), String> {
        let version = self.u8()?;
        if version > HIGHEST_PROTOCOL {
            return Err(format!("expected protocol 2 to {HIGHEST_PROTOCOL}, found protocol {version}"));
        }
        Ok(())
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let bytes: &'a [u8] = self.bytes;
        let end = self.pos.checked_add(len).filter(|&end| end <= bytes.len()).ok_or_else(|| {
            format!(
                "expected {len} more bytes, found {} before the end of the data",
                bytes.len().saturating_sub(self.pos)
            )
        })?;
        let slice = &bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let slice = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    /// A `\n`-terminated ASCII argument of the text opcodes (GLOBAL, PUT, GET).
    fn line(&mut self) -> Result<&'a str, String> {
        let bytes: &'a [u8] = self.bytes;
        let rest = bytes.get(self.pos..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("expected a newline-terminated argument, found the end of the data")?;
        self.pos += len + 1;
        std::str::from_utf8(&rest[..len]).map_err(|_| "expected a UTF-8 text argument, found invalid UTF-8".to_string())
    }

    fn decimal_line(&mut self) -> Result<u32, String> {
        let text = self.line()?;
        text.trim().parse().map_err(|_| format!("expected a memo index, found {:?}", truncated(text, 20)))
    }

    fn long(&mut self, len: usize) -> Result<(), String> {
        if len > MAX_INT_BYTES {
            return Err(format!("expected an integer of at most {MAX_INT_BYTES} bytes, found one of {len} bytes"));
        }
        let bytes = self.take(len)?;
        self.stack.push(Value::Int(twos_complement_le(bytes)));
        Ok(())
    }

    fn string(&mut self, len: usize) -> Result<(), String> {
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes)
            .map_err(|e| format!("expected a UTF-8 string of {len} bytes, found invalid UTF-8 ({e})"))?;
        self.stack.push(Value::Str(text.into()));
        Ok(())
    }

    fn byte_string(&mut self, len: usize) -> Result<(), String> {
        let bytes = self.take(len)?;
        self.stack.push(Value::Bytes(bytes.into()));
        Ok(())
    }

    fn push_node(&mut self, node: Node) {
        self.nodes.push(node);
        self.stack.push(Value::Node(self.nodes.len() - 1));
    }

    /// The lowest stack index the current MARK frame may touch.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn underflow(&self) -> String {
        if self.marks.is_empty() {
            "expected a value on the stack, found an empty stack".to_string()
        } else {
            "expected a value on the stack, found none above the last MARK".to_string()
        }
    }

    fn pop(&mut self) -> Result<Value, String> {
        if self.stack.len() <= self.floor() {
            return Err(self.underflow());
        }
        self.stack.pop().ok_or_else(|| self.underflow())
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Value>, String> {
        let start =
            self.stack.len().checked_sub(n).filter(|&s| s >= self.floor()).ok_or_else(|| {
                format!("expected {n} values on the stack, found {}", self.stack.len() - self.floor())
            })?;
        Ok(self.stack.split_off(start))
    }

    fn top(&self) -> Result<&Value, String> {
        if self.stack.len() <= self.floor() {
            return Err(self.underflow());
        }
        self.stack.last().ok_or_else(|| self.underflow())
    }

    fn top_node_mut(&mut self) -> Result<&mut Node, String> {
        let target = self.top()?.clone();
        let Value::Node(id) = target else {
            return Err(format!("expected a container or object on the stack, found {}", describe_leaf(&target)));
        };
        self.nodes.get_mut(id).ok_or_else(|| "expected a container, found a dangling reference".to_string())
    }

    /// The items since the innermost MARK, which is closed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("expected a MARK on the stack, found none")?;
        // Pops never go below the innermost mark, so it is within the stack.
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), String> {
        match self.top_node_mut()? {
            Node::List(list) => list.extend(items),
            // Dropped: see `Call`.
            Node::Call(_) => {}
            _ => return Err("expected a list to append to, found another object".to_string()),
        }
        Ok(())
    }

    fn set_items(&mut self, entries: Vec<(Value, Value)>) -> Result<(), String> {
        match self.top_node_mut()? {
            Node::Dict(dict) => dict.extend(entries),
            Node::Call(call) => call.items.extend(entries),
            _ => return Err("expected a dict to set items in, found another object".to_string()),
        }
        Ok(())
    }

    fn memo_put(&mut self, index: u32) -> Result<(), String> {
        let value = self.top()?.clone();
        self.memo.insert(index, value);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<(), String> {
        let value = self.memo.get(&index).ok_or_else(|| {
            format!("expected memo entry {index}, found none (the memo holds {} entries)", self.memo.len())
        })?;
        self.stack.push(value.clone());
        Ok(())
    }
}

fn to_usize(len: u64) -> Result<usize, String> {
    usize::try_from(len).map_err(|_| format!("expected a length that fits in memory, found {len}"))
}

/// Alternating keys and values, as DICT and SETITEMS take them.
fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if items.len() % 2 != 0 {
        return Err(format!("expected key/value pairs, found an odd number ({}) of items", items.len()));
    }
    let mut entries = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(key), Some(value)) = (items.next(), items.next()) {
        entries.push((key, value));
    }
    Ok(entries)
}

/// A little-endian two's-complement integer of at most 16 bytes (LONG1/LONG4).
fn twos_complement_le(bytes: &[u8]) -> i128 {
    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    let mut wide = [if negative { 0xff } else { 0 }; MAX_INT_BYTES];
    wide[..bytes.len()].copy_from_slice(bytes);
    i128::from_le_bytes(wide)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_all(bytes: &[u8]) -> Result<Pickle, String> {
        load(bytes, 0).map(|(p, _)| p)
    }

    #[test]
    fn ordered_dict_with_items_and_shared_memo() {
        // OrderedDict([('a', 1), ('b', [1, 1])]) where the list repeats a memoised int.
        let bytes =
            b"\x80\x02ccollections\nOrderedDict\nq\x00)R(X\x01\x00\x00\x00aK\x01q\x01X\x01\x00\x00\x00b]q\x02(h\x01h\x01eu.";
        let p = load_all(bytes).unwrap();
        let call = p.call(p.root()).unwrap();
        assert_eq!(p.global(&call.callable), Some(("collections", "OrderedDict")));
        assert_eq!(call.items.len(), 2);
        assert_eq!(call.items[0], (Value::Str("a".into()), Value::Int(1)));
        assert_eq!(p.sequence(&call.items[1].1).unwrap(), &[Value::Int(1), Value::Int(1)]);
    }

    #[test]
    fn memo_sees_later_mutation() {
        // d = {}; memo[0] = d; d['k'] = 1; result = (d, memo[0])
        let p = load_all(b"\x80\x02}q\x00X\x01\x00\x00\x00kK\x01sh\x00\x86.").unwrap();
        let items = p.sequence(p.root()).unwrap();
        assert_eq!(items[0], items[1]);
        assert!(matches!(p.node(&items[1]), Some(Node::Dict(d)) if d.len() == 1));
    }

    #[test]
    fn longs_and_magic_number() {
        let (p, end) = load(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.rest", 0).unwrap();
        assert_eq!(p.root().as_int(), Some(0x1950a86a20f9469cfc6c));
        assert_eq!(end, 15);
        assert_eq!(load_all(b"\x8a\x01\xff.").unwrap().root().as_int(), Some(-1));
        assert_eq!(load_all(b"\x8a\x00.").unwrap().root().as_int(), Some(0));
        assert!(load_all(b"\x8a\x11\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00.").is_err());
    }

    #[test]
    fn errors_say_what_and_where() {
        let e = load_all(b"\x80\x02\xff.").unwrap_err();
        assert!(e.contains("0xff at byte 2: unknown"), "{e}");
        let e = load_all(b"\x80\x02h\x07.").unwrap_err();
        assert!(e.contains("expected memo entry 7"), "{e}");
        let e = load_all(b"(R.").unwrap_err();
        assert!(e.contains("above the last MARK"), "{e}");
        let e = load_all(b"u.").unwrap_err();
        assert!(e.contains("expected a MARK"), "{e}");
        let e = load_all(b"X\xff\xff\xff\xffabc.").unwrap_err();
        assert!(e.contains("expected 4294967295 more bytes"), "{e}");
        let e = load_all(b"\x80\x02N").unwrap_err();
        assert!(e.contains("no STOP"), "{e}");
        let e = load_all(b"K\x01(K\x02K\x03u.").unwrap_err();
        assert!(e.contains("expected a container or object on the stack, found int 1"), "{e}");
        let e = load_all(b"]K\x01K\x02s.").unwrap_err();
        assert!(e.contains("expected a dict to set items in"), "{e}");
    }

    #[test]
    fn deep_nesting_neither_recurses_nor_overflows() {
        let mut bytes = b"\x80\x02)".to_vec();
        bytes.extend(std::iter::repeat(op::TUPLE1).take(1_000_000));
        bytes.push(op::STOP);
        let p = load_all(&bytes).unwrap();
        assert_eq!(p.nodes().len(), 1_000_001);
        drop(p);
    }

    #[test]
    fn cycles_load_and_drop() {
        // l = []; l.append(l)
        let p = load_all(b"]q\x00h\x00a.").unwrap();
        assert_eq!(p.sequence(p.root()).unwrap(), &[p.root().clone()]);
    }
}
