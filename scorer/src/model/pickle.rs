//! A pickle reader that never executes anything: a small virtual machine over pickle opcodes
//! (protocols 0–5) that builds a tree of plain values. Globals stay names; calls (`REDUCE`,
//! `NEWOBJ`, `OBJ`, `INST`) become [`Obj::Object`] records of class, arguments and state, which
//! [`super::sklearn`] then interprets for the few classes it knows.
//!
//! joblib files are pickles in which each numpy array is a `NumpyArrayWrapper` whose raw bytes
//! follow its `BUILD` in the stream; the reader consumes them there, as joblib's unpickler does.
//!
//! Bounded for hostile input: one opcode byte can create an object, a list slot or a memo entry
//! worth ~100 heap bytes, so the VM charges every allocation against a heap budget (a small
//! multiple of the input size with a hard cap, [`heap_budget`]) and stops with
//! [`PickleError::Limit`] when it is spent; limits below also cap the stack, the memo and nesting.

use std::collections::HashMap;

/// Values on the VM's stack; anything bigger than a scalar lives in [`Pickle::heap`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// Python `None`.
    None,
    /// Python `bool`.
    Bool(bool),
    /// Python `int` that fits in i64.
    Int(i64),
    /// Python `float`.
    Float(f64),
    /// Index into [`Pickle::heap`].
    Ref(u32),
}

/// Heap objects: containers, strings and the records of calls.
#[derive(Debug, Clone, PartialEq)]
pub enum Obj {
    /// `str`.
    Str(String),
    /// `bytes` (also protocol-0/1 `STRING`s, which were bytes in Python 2).
    Bytes(Vec<u8>),
    /// `bytearray`.
    ByteArray(Vec<u8>),
    /// An int too large for i64: little-endian two's complement bytes.
    BigInt(Vec<u8>),
    /// `tuple`.
    Tuple(Vec<Value>),
    /// `list`.
    List(Vec<Value>),
    /// `dict` as insertion-ordered pairs; a later duplicate key wins (see [`Pickle::dict_get`]).
    Dict(Vec<(Value, Value)>),
    /// `set` / `frozenset`.
    Set(Vec<Value>),
    /// A global name (`module.name`), never resolved.
    Global {
        /// Module path, e.g. `sklearn.svm._classes`.
        module: String,
        /// Attribute name, e.g. `OneClassSVM`.
        name: String,
    },
    /// The record of a call or instantiation, plus the state `BUILD` gave it.
    Object {
        /// The callable or class (usually a `Global`).
        class: Value,
        /// Positional arguments (a tuple).
        args: Value,
        /// State from `BUILD`, if any.
        state: Option<Value>,
        /// Items appended or set after creation (e.g. `SETITEM` on a dict subclass).
        items: Vec<(Value, Value)>,
    },
    /// A joblib array: the wrapper's state plus the raw bytes that followed it.
    JoblibArray {
        /// The `NumpyArrayWrapper` state dict (shape, order, dtype, ...).
        state: Value,
        /// Raw array bytes in the wrapper's order and dtype.
        data: Vec<u8>,
    },
}

/// The result of reading a pickle.
#[derive(Debug, Clone, PartialEq)]
pub struct Pickle {
    /// All heap objects; [`Value::Ref`] indexes this.
    pub heap: Vec<Obj>,
    /// The unpickled value.
    pub root: Value,
    /// Protocol from the first `PROTO` opcode (None for protocols 0–1).
    pub protocol: Option<u8>,
    /// True when joblib array wrappers were found.
    pub joblib: bool,
}

/// Why a pickle could not be read. Positions are byte offsets into the input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PickleError {
    /// The input ended inside an opcode or before `STOP`.
    #[error("truncated pickle: {what} at byte {pos}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where.
        pos: usize,
    },
    /// An opcode the reader does not support (or that does not exist).
    #[error("unsupported pickle opcode 0x{op:02x} at byte {pos}")]
    UnsupportedOpcode {
        /// The opcode byte.
        op: u8,
        /// Where.
        pos: usize,
    },
    /// The opcodes do not form a valid pickle (stack underflow, missing mark, wrong types...).
    #[error("malformed pickle at byte {pos}: {reason}")]
    Malformed {
        /// Where.
        pos: usize,
        /// What went wrong.
        reason: String,
    },
    /// A limit protecting memory was exceeded.
    #[error("pickle exceeds a limit at byte {pos}: {reason}")]
    Limit {
        /// Where.
        pos: usize,
        /// Which limit.
        reason: String,
    },
}

/// Most values on the stack at once.
const MAX_STACK: usize = 1 << 20;
/// Most nested marks.
const MAX_MARKS: usize = 1 << 16;
/// Largest memo index accepted.
const MAX_MEMO_INDEX: u64 = 1 << 24;
/// Most nested pickles (joblib object arrays are pickles inside the stream).
const MAX_NESTING: u32 = 4;
/// Heap bytes allowed per input byte: real models use 1–10 (arrays are their own bytes; small
/// strings and tuples cost an object header each), hostile ones ~100.
const HEAP_PER_INPUT_BYTE: usize = 16;
/// Heap every input may use, however small: the smallest real models need a few hundred KB.
const HEAP_FLOOR: usize = 32 << 20;
/// Heap no input may exceed, whatever its size: a scoring pod scores many sensors at once.
pub const HEAP_CAP: usize = 256 << 20;
/// What one memo entry costs (hash map slot, key, value and load-factor slack).
const MEMO_ENTRY_BYTES: usize = 64;

/// The heap budget for an input of `len` bytes: `16 × len`, at least 32 MiB, at most 256 MiB.
pub fn heap_budget(len: usize) -> usize {
    len.saturating_mul(HEAP_PER_INPUT_BYTE)
        .clamp(HEAP_FLOOR, HEAP_CAP)
}

/// Reads a pickle (or joblib file) into a value tree, within [`heap_budget`] of its size.
pub fn parse(input: &[u8]) -> Result<Pickle, PickleError> {
    parse_with_budget(input, heap_budget(input.len()))
}

/// Reads a pickle within `budget` bytes of accounted heap (objects, their payloads, list and
/// dict items, memo entries).
pub fn parse_with_budget(input: &[u8], budget: usize) -> Result<Pickle, PickleError> {
    let mut vm = Vm {
        input,
        pos: 0,
        heap: Vec::new(),
        protocol: None,
        joblib: false,
        used: 0,
        budget,
    };
    let root = vm.run(0)?;
    Ok(Pickle {
        heap: vm.heap,
        root,
        protocol: vm.protocol,
        joblib: vm.joblib,
    })
}

impl Pickle {
    /// The heap object a value refers to, if it is a reference.
    pub fn obj(&self, v: Value) -> Option<&Obj> {
        match v {
            Value::Ref(i) => self.heap.get(i as usize),
            _ => None,
        }
    }

    /// The string a value holds (`str`, or UTF-8 `bytes`).
    pub fn str(&self, v: Value) -> Option<&str> {
        match self.obj(v)? {
            Obj::Str(s) => Some(s),
            Obj::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The items of a tuple or list.
    pub fn seq(&self, v: Value) -> Option<&[Value]> {
        match self.obj(v)? {
            Obj::Tuple(items) | Obj::List(items) => Some(items),
            _ => None,
        }
    }

    /// Looks up a string key in a dict (the last binding wins, as in Python).
    pub fn dict_get(&self, dict: Value, key: &str) -> Option<Value> {
        match self.obj(dict)? {
            Obj::Dict(pairs) => pairs
                .iter()
                .rev()
                .find(|(k, _)| self.str(*k) == Some(key))
                .map(|(_, v)| *v),
            _ => None,
        }
    }

    /// `(module, name)` of a global.
    pub fn global(&self, v: Value) -> Option<(&str, &str)> {
        match self.obj(v)? {
            Obj::Global { module, name } => Some((module, name)),
            _ => None,
        }
    }

    /// A short description of what a value is, for error messages: the class of objects
    /// (`module.Name`), else the Python type name.
    pub fn describe(&self, v: Value) -> String {
        match v {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Ref(_) => match self.obj(v) {
                Some(Obj::Str(_)) => "str".into(),
                Some(Obj::Bytes(_)) => "bytes".into(),
                Some(Obj::ByteArray(_)) => "bytearray".into(),
                Some(Obj::BigInt(_)) => "int".into(),
                Some(Obj::Tuple(_)) => "tuple".into(),
                Some(Obj::List(_)) => "list".into(),
                Some(Obj::Dict(_)) => "dict".into(),
                Some(Obj::Set(_)) => "set".into(),
                Some(Obj::Global { module, name }) => {
                    format!("{module}.{name} (a class or function)")
                }
                Some(Obj::Object { class, .. }) => match self.global(*class) {
                    Some((m, n)) => format!("{m}.{n}"),
                    None => "an object of unknown class".into(),
                },
                Some(Obj::JoblibArray { .. }) => "numpy.ndarray (joblib)".into(),
                None => "a dangling reference".into(),
            },
        }
    }
}

struct Vm<'a> {
    input: &'a [u8],
    pos: usize,
    heap: Vec<Obj>,
    protocol: Option<u8>,
    joblib: bool,
    /// Heap bytes accounted so far.
    used: usize,
    /// Heap bytes allowed.
    budget: usize,
}

impl<'a> Vm<'a> {
    /// Accounts `bytes` of heap; fails once the budget is spent, before anything is allocated.
    fn charge(&mut self, bytes: usize) -> Result<(), PickleError> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.budget {
            return Err(PickleError::Limit {
                pos: self.pos,
                reason: format!(
                    "the pickle needs more than {} MiB of memory (budget for {} input bytes; no real model does)",
                    self.budget >> 20,
                    self.input.len()
                ),
            });
        }
        Ok(())
    }

    fn malformed(&self, reason: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            pos: self.pos,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.input.len());
        match end {
            Some(end) => {
                let s = &self.input[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(PickleError::Truncated {
                what,
                pos: self.pos,
            }),
        }
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, PickleError> {
        Ok(self.take(1, what)?[0])
    }

    fn le_u16(&mut self, what: &'static str) -> Result<u64, PickleError> {
        let b = self.take(2, what)?;
        Ok(u64::from(u16::from_le_bytes([b[0], b[1]])))
    }

    fn le_u32(&mut self, what: &'static str) -> Result<u64, PickleError> {
        let b = self.take(4, what)?;
        Ok(u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
    }

    fn le_u64(&mut self, what: &'static str) -> Result<u64, PickleError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// Reads `len` bytes; the length was read from the input, so check it against what is left
    /// before trusting it.
    fn take_len(&mut self, len: u64, what: &'static str) -> Result<&'a [u8], PickleError> {
        let n = usize::try_from(len).map_err(|_| PickleError::Truncated {
            what,
            pos: self.pos,
        })?;
        self.take(n, what)
    }

    fn line(&mut self, what: &'static str) -> Result<&'a [u8], PickleError> {
        let rest = &self.input[self.pos..];
        match rest.iter().position(|b| *b == b'\n') {
            Some(i) => {
                self.pos += i + 1;
                Ok(&rest[..i])
            }
            None => Err(PickleError::Truncated {
                what,
                pos: self.pos,
            }),
        }
    }

    fn alloc(&mut self, obj: Obj) -> Result<Value, PickleError> {
        let payload = match &obj {
            Obj::Str(s) | Obj::Global { module: s, .. } => s.len(),
            Obj::Bytes(b) | Obj::ByteArray(b) | Obj::BigInt(b) => b.len(),
            Obj::Tuple(v) | Obj::List(v) | Obj::Set(v) => v.len() * size_of::<Value>(),
            Obj::Dict(p) => p.len() * size_of::<(Value, Value)>(),
            Obj::Object { .. } => 0,
            Obj::JoblibArray { data, .. } => data.len(),
        };
        // The heap vector doubles as it grows: count each slot twice.
        self.charge(2 * size_of::<Obj>() + payload)?;
        let i = u32::try_from(self.heap.len()).map_err(|_| PickleError::Limit {
            pos: self.pos,
            reason: "too many objects".into(),
        })?;
        self.heap.push(obj);
        Ok(Value::Ref(i))
    }

    fn text(&self, bytes: &[u8], what: &str) -> Result<String, PickleError> {
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.malformed(format!("{what} is not UTF-8")))
    }

    /// Runs opcodes until `STOP`; returns the value left on the stack.
    fn run(&mut self, nesting: u32) -> Result<Value, PickleError> {
        if nesting > MAX_NESTING {
            return Err(PickleError::Limit {
                pos: self.pos,
                reason: "nested pickles too deep".into(),
            });
        }
        let mut stack: Vec<Value> = Vec::new();
        let mut marks: Vec<usize> = Vec::new();
        let mut memo: HashMap<u64, Value> = HashMap::new();
        loop {
            if stack.len() > MAX_STACK {
                return Err(PickleError::Limit {
                    pos: self.pos,
                    reason: format!("stack above {MAX_STACK}"),
                });
            }
            let op_pos = self.pos;
            let op = self.byte("opcode")?;
            match op {
                // PROTO
                0x80 => {
                    let p = self.byte("protocol")?;
                    if p > 5 {
                        return Err(self.malformed(format!("protocol {p} is newer than 5")));
                    }
                    if nesting == 0 && self.protocol.is_none() {
                        self.protocol = Some(p);
                    }
                }
                // FRAME: frames are contiguous in the stream, so the length is only a hint.
                0x95 => {
                    self.take(8, "frame length")?;
                }
                // STOP
                b'.' => {
                    return stack
                        .pop()
                        .ok_or_else(|| self.malformed("STOP with an empty stack"));
                }
                // MARK
                b'(' => {
                    if marks.len() >= MAX_MARKS {
                        return Err(PickleError::Limit {
                            pos: self.pos,
                            reason: "too many nested marks".into(),
                        });
                    }
                    marks.push(stack.len());
                }
                // POP
                b'0' => {
                    if stack.pop().is_none() {
                        // Python pops the mark when the stack above it is empty.
                        marks
                            .pop()
                            .ok_or_else(|| self.malformed("POP on an empty stack"))?;
                    }
                }
                // POP_MARK
                b'1' => {
                    let m = self.pop_mark(&mut marks, &stack)?;
                    stack.truncate(m);
                }
                // DUP
                b'2' => {
                    let top = *stack
                        .last()
                        .ok_or_else(|| self.malformed("DUP on an empty stack"))?;
                    stack.push(top);
                }
                // NONE, NEWTRUE, NEWFALSE
                b'N' => stack.push(Value::None),
                0x88 => stack.push(Value::Bool(true)),
                0x89 => stack.push(Value::Bool(false)),
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = self.le_u32("BININT")? as u32 as i32;
                    stack.push(Value::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.byte("BININT1")?;
                    stack.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = self.le_u16("BININT2")?;
                    stack.push(Value::Int(v as i64));
                }
                // LONG1, LONG4
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        u64::from(self.byte("LONG1")?)
                    } else {
                        self.le_u32("LONG4")?
                    };
                    let bytes = self.take_len(n, "LONG bytes")?;
                    let v = long_value(bytes);
                    let v = match v {
                        Some(i) => Value::Int(i),
                        None => self.alloc(Obj::BigInt(bytes.to_vec()))?,
                    };
                    stack.push(v);
                }
                // INT, LONG (text, protocol 0)
                b'I' | b'L' => {
                    let line = self.line("INT")?;
                    let s =
                        std::str::from_utf8(line).map_err(|_| self.malformed("INT is not text"))?;
                    let s = s.trim_end_matches('L');
                    let v = match s {
                        "00" if op == b'I' => Value::Bool(false),
                        "01" if op == b'I' => Value::Bool(true),
                        _ => Value::Int(
                            s.parse::<i64>()
                                .map_err(|_| self.malformed(format!("bad integer {s:?}")))?,
                        ),
                    };
                    stack.push(v);
                }
                // BINFLOAT (big-endian), FLOAT (text)
                b'G' => {
                    let b = self.take(8, "BINFLOAT")?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    stack.push(Value::Float(f64::from_be_bytes(a)));
                }
                b'F' => {
                    let line = self.line("FLOAT")?;
                    let s = std::str::from_utf8(line)
                        .map_err(|_| self.malformed("FLOAT is not text"))?;
                    let v = s
                        .trim()
                        .parse::<f64>()
                        .map_err(|_| self.malformed(format!("bad float {s:?}")))?;
                    stack.push(Value::Float(v));
                }
                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.le_u32("BINUNICODE length")?,
                        0x8c => u64::from(self.byte("SHORT_BINUNICODE length")?),
                        _ => self.le_u64("BINUNICODE8 length")?,
                    };
                    let b = self.take_len(n, "string")?;
                    // Python writes lone surrogates with 'surrogatepass'; keep such strings lossy.
                    let s = String::from_utf8_lossy(b).into_owned();
                    let v = self.alloc(Obj::Str(s))?;
                    stack.push(v);
                }
                // UNICODE (protocol 0): raw-unicode-escape, i.e. Latin-1 bytes plus \uXXXX escapes.
                b'V' => {
                    let line = self.line("UNICODE")?;
                    let s = raw_unicode_escape(line)
                        .ok_or_else(|| self.malformed("bad \\u escape in UNICODE"))?;
                    let v = self.alloc(Obj::Str(s))?;
                    stack.push(v);
                }
                // STRING (protocol 0, quoted repr)
                b'S' => {
                    let line = self.line("STRING")?;
                    let b = unquote(line).ok_or_else(|| self.malformed("bad STRING quoting"))?;
                    let v = self.alloc(Obj::Bytes(b))?;
                    stack.push(v);
                }
                // BINSTRING, SHORT_BINSTRING, BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                b'T' | b'U' | b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'T' | b'B' => self.le_u32("bytes length")?,
                        b'U' | b'C' => u64::from(self.byte("bytes length")?),
                        _ => self.le_u64("bytes length")?,
                    };
                    let b = self.take_len(n, "bytes")?.to_vec();
                    let obj = if op == 0x96 {
                        Obj::ByteArray(b)
                    } else {
                        Obj::Bytes(b)
                    };
                    let v = self.alloc(obj)?;
                    stack.push(v);
                }
                // NEXT_BUFFER (out-of-band data is not in the file)
                0x97 => {
                    return Err(
                        self.malformed("out-of-band buffers (NEXT_BUFFER) are not supported")
                    );
                }
                // READONLY_BUFFER: no-op for us
                0x98 => {
                    if stack.is_empty() {
                        return Err(self.malformed("READONLY_BUFFER on an empty stack"));
                    }
                }
                // EMPTY_TUPLE, TUPLE1-3, TUPLE
                b')' => {
                    let v = self.alloc(Obj::Tuple(Vec::new()))?;
                    stack.push(v);
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if stack.len() < n {
                        return Err(self.malformed("TUPLE with too few items"));
                    }
                    let items = stack.split_off(stack.len() - n);
                    let v = self.alloc(Obj::Tuple(items))?;
                    stack.push(v);
                }
                b't' => {
                    let m = self.pop_mark(&mut marks, &stack)?;
                    let items = stack.split_off(m);
                    let v = self.alloc(Obj::Tuple(items))?;
                    stack.push(v);
                }
                // EMPTY_LIST, LIST, EMPTY_DICT, DICT, EMPTY_SET, FROZENSET
                b']' => {
                    let v = self.alloc(Obj::List(Vec::new()))?;
                    stack.push(v);
                }
                b'l' => {
                    let m = self.pop_mark(&mut marks, &stack)?;
                    let items = stack.split_off(m);
                    let v = self.alloc(Obj::List(items))?;
                    stack.push(v);
                }
                b'}' => {
                    let v = self.alloc(Obj::Dict(Vec::new()))?;
                    stack.push(v);
                }
                b'd' => {
                    let m = self.pop_mark(&mut marks, &stack)?;
                    let items = stack.split_off(m);
                    if !items.len().is_multiple_of(2) {
                        return Err(self.malformed("DICT with an odd number of items"));
                    }
                    let pairs = items.chunks_exact(2).map(|p| (p[0], p[1])).collect();
                    let v = self.alloc(Obj::Dict(pairs))?;
                    stack.push(v);
                }
                0x8f => {
                    let v = self.alloc(Obj::Set(Vec::new()))?;
                    stack.push(v);
                }
                0x91 => {
                    let m = self.pop_mark(&mut marks, &stack)?;
                    let items = stack.split_off(m);
                    let v = self.alloc(Obj::Set(items))?;
                    stack.push(v);
                }
                // APPEND, APPENDS, ADDITEMS
                b'a' => {
                    let item = stack
                        .pop()
                        .ok_or_else(|| self.malformed("APPEND on an empty stack"))?;
                    let target = *stack
                        .last()
                        .ok_or_else(|| self.malformed("APPEND without a list"))?;
                    self.extend(target, vec![item])?;
                }
                b'e' | 0x90 => {
                    let m = self.pop_mark(&mut marks, &stack)?;
                    let items = stack.split_off(m);
                    let target = *stack
                        .last()
                        .ok_or_else(|| self.malformed("APPENDS without a list"))?;
                    self.extend(target, items)?;
                }
                // SETITEM, SETITEMS
                b's' => {
                    if stack.len() < 3 {
                        return Err(self.malformed("SETITEM with too few items"));
                    }
                    let items = stack.split_off(stack.len() - 2);
                    let target = *stack
                        .last()
                        .ok_or_else(|| self.malformed("SETITEM without a dict"))?;
                    self.set_items(target, items)?;
                }
                b'u' => {
                    let m = self.pop_mark(&mut marks, &stack)?;
                    let items = stack.split_off(m);
                    if !items.len().is_multiple_of(2) {
                        return Err(self.malformed("SETITEMS with an odd number of items"));
                    }
                    let target = *stack
                        .last()
                        .ok_or_else(|| self.malformed("SETITEMS without a dict"))?;
                    self.set_items(target, items)?;
                }
                // GLOBAL (text), STACK_GLOBAL
                b'c' => {
                    let module = self.line("GLOBAL module")?;
                    let name = self.line("GLOBAL name")?;
                    let (module, name) = (self.text(module, "module")?, self.text(name, "name")?);
                    let v = self.alloc(Obj::Global { module, name })?;
                    stack.push(v);
                }
                0x93 => {
                    let name = stack
                        .pop()
                        .ok_or_else(|| self.malformed("STACK_GLOBAL without a name"))?;
                    let module = stack
                        .pop()
                        .ok_or_else(|| self.malformed("STACK_GLOBAL without a module"))?;
                    let (module, name) = match (self.str_of(module), self.str_of(name)) {
                        (Some(m), Some(n)) => (m, n),
                        _ => return Err(self.malformed("STACK_GLOBAL needs two strings")),
                    };
                    let v = self.alloc(Obj::Global { module, name })?;
                    stack.push(v);
                }
                // REDUCE, NEWOBJ, NEWOBJ_EX
                b'R' | 0x81 => {
                    let args = stack
                        .pop()
                        .ok_or_else(|| self.malformed("REDUCE without arguments"))?;
                    let class = stack
                        .pop()
                        .ok_or_else(|| self.malformed("REDUCE without a callable"))?;
                    let v = self.alloc(Obj::Object {
                        class,
                        args,
                        state: None,
                        items: Vec::new(),
                    })?;
                    stack.push(v);
                }
                0x92 => {
                    let _kwargs = stack
                        .pop()
                        .ok_or_else(|| self.malformed("NEWOBJ_EX without kwargs"))?;
                    let args = stack
                        .pop()
                        .ok_or_else(|| self.malformed("NEWOBJ_EX without arguments"))?;
                    let class = stack
                        .pop()
                        .ok_or_else(|| self.malformed("NEWOBJ_EX without a class"))?;
                    let v = self.alloc(Obj::Object {
                        class,
                        args,
                        state: None,
                        items: Vec::new(),
                    })?;
                    stack.push(v);
                }
                // OBJ: MARK class args... ; INST: MARK args... then module/name lines
                b'o' => {
                    let m = self.pop_mark(&mut marks, &stack)?;
                    let mut items = stack.split_off(m);
                    if items.is_empty() {
                        return Err(self.malformed("OBJ without a class"));
                    }
                    let class = items.remove(0);
                    let args = self.alloc(Obj::Tuple(items))?;
                    let v = self.alloc(Obj::Object {
                        class,
                        args,
                        state: None,
                        items: Vec::new(),
                    })?;
                    stack.push(v);
                }
                b'i' => {
                    let module = self.line("INST module")?;
                    let name = self.line("INST name")?;
                    let (module, name) = (self.text(module, "module")?, self.text(name, "name")?);
                    let m = self.pop_mark(&mut marks, &stack)?;
                    let items = stack.split_off(m);
                    let class = self.alloc(Obj::Global { module, name })?;
                    let args = self.alloc(Obj::Tuple(items))?;
                    let v = self.alloc(Obj::Object {
                        class,
                        args,
                        state: None,
                        items: Vec::new(),
                    })?;
                    stack.push(v);
                }
                // BUILD
                b'b' => {
                    let state = stack
                        .pop()
                        .ok_or_else(|| self.malformed("BUILD without state"))?;
                    let target = *stack
                        .last()
                        .ok_or_else(|| self.malformed("BUILD without an object"))?;
                    let is_wrapper = self.build(target, state)?;
                    if is_wrapper {
                        let array = self.read_joblib_array(state, nesting)?;
                        if let Some(top) = stack.last_mut() {
                            *top = array;
                        }
                    }
                }
                // PUT, BINPUT, LONG_BINPUT, MEMOIZE
                b'p' | b'q' | b'r' | 0x94 => {
                    let idx = match op {
                        b'p' => {
                            let line = self.line("PUT")?;
                            let s = std::str::from_utf8(line).unwrap_or("");
                            s.parse::<u64>()
                                .map_err(|_| self.malformed(format!("bad PUT index {s:?}")))?
                        }
                        b'q' => u64::from(self.byte("BINPUT")?),
                        b'r' => self.le_u32("LONG_BINPUT")?,
                        _ => memo.len() as u64,
                    };
                    if idx > MAX_MEMO_INDEX {
                        return Err(PickleError::Limit {
                            pos: self.pos,
                            reason: format!("memo index {idx}"),
                        });
                    }
                    let top = *stack
                        .last()
                        .ok_or_else(|| self.malformed("memoizing an empty stack"))?;
                    if memo.insert(idx, top).is_none() {
                        self.charge(MEMO_ENTRY_BYTES)?;
                    }
                }
                // GET, BINGET, LONG_BINGET
                b'g' | b'h' | b'j' => {
                    let idx = match op {
                        b'g' => {
                            let line = self.line("GET")?;
                            let s = std::str::from_utf8(line).unwrap_or("");
                            s.parse::<u64>()
                                .map_err(|_| self.malformed(format!("bad GET index {s:?}")))?
                        }
                        b'h' => u64::from(self.byte("BINGET")?),
                        _ => self.le_u32("LONG_BINGET")?,
                    };
                    let v = *memo
                        .get(&idx)
                        .ok_or_else(|| self.malformed(format!("memo index {idx} unset")))?;
                    stack.push(v);
                }
                // PERSID, BINPERSID, EXT1/2/4: need outside code or registries.
                _ => return Err(PickleError::UnsupportedOpcode { op, pos: op_pos }),
            }
        }
    }

    fn pop_mark(&self, marks: &mut Vec<usize>, stack: &[Value]) -> Result<usize, PickleError> {
        let m = marks.pop().ok_or_else(|| self.malformed("no MARK"))?;
        if m > stack.len() {
            return Err(self.malformed("MARK above the stack"));
        }
        Ok(m)
    }

    fn str_of(&self, v: Value) -> Option<String> {
        match v {
            Value::Ref(i) => match self.heap.get(i as usize)? {
                Obj::Str(s) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    fn obj_mut(&mut self, v: Value) -> Option<&mut Obj> {
        match v {
            Value::Ref(i) => self.heap.get_mut(i as usize),
            _ => None,
        }
    }

    fn extend(&mut self, target: Value, items: Vec<Value>) -> Result<(), PickleError> {
        // Items recorded on an object are pairs; count the larger size.
        self.charge(items.len() * size_of::<(Value, Value)>())?;
        let pos = self.pos;
        match self.obj_mut(target) {
            Some(Obj::List(v)) | Some(Obj::Set(v)) => v.extend(items),
            // A list subclass: record the items on the object.
            Some(Obj::Object { items: rec, .. }) => {
                rec.extend(items.into_iter().map(|i| (Value::None, i)))
            }
            _ => {
                return Err(PickleError::Malformed {
                    pos,
                    reason: "APPEND to something that is not a list".into(),
                });
            }
        }
        Ok(())
    }

    fn set_items(&mut self, target: Value, items: Vec<Value>) -> Result<(), PickleError> {
        self.charge(items.len() / 2 * size_of::<(Value, Value)>())?;
        let pos = self.pos;
        let pairs = items.chunks_exact(2).map(|p| (p[0], p[1]));
        match self.obj_mut(target) {
            Some(Obj::Dict(d)) => d.extend(pairs),
            Some(Obj::Object { items: rec, .. }) => rec.extend(pairs),
            _ => {
                return Err(PickleError::Malformed {
                    pos,
                    reason: "SETITEM on something that is not a dict".into(),
                });
            }
        }
        Ok(())
    }

    /// Applies BUILD; returns true when the target is a joblib array wrapper.
    fn build(&mut self, target: Value, new_state: Value) -> Result<bool, PickleError> {
        let pos = self.pos;
        let class = match self.obj_mut(target) {
            Some(Obj::Object { state, class, .. }) => {
                *state = Some(new_state);
                *class
            }
            _ => {
                return Err(PickleError::Malformed {
                    pos,
                    reason: "BUILD on something that is not an object".into(),
                });
            }
        };
        let is_wrapper = match class {
            Value::Ref(i) => matches!(
                self.heap.get(i as usize),
                Some(Obj::Global { module, name }) if name == "NumpyArrayWrapper"
                    // 2018-era files used the copy vendored as sklearn.externals.joblib.
                    && (module == "joblib.numpy_pickle" || module.ends_with(".joblib.numpy_pickle"))
            ),
            _ => false,
        };
        Ok(is_wrapper)
    }

    /// Reads the raw bytes that follow a joblib `NumpyArrayWrapper` (see joblib's `read_array`).
    fn read_joblib_array(&mut self, state: Value, nesting: u32) -> Result<Value, PickleError> {
        self.joblib = true;
        let (count, itemsize, object, aligned) = self.joblib_layout(state)?;
        if object {
            // Object arrays are a whole pickle nested in the stream.
            let inner = self.run(nesting + 1)?;
            return Ok(inner);
        }
        if aligned {
            let pad = self.byte("joblib padding length")?;
            self.take(usize::from(pad), "joblib padding")?;
        }
        let n = count
            .checked_mul(itemsize)
            .ok_or_else(|| PickleError::Limit {
                pos: self.pos,
                reason: "joblib array size overflows".into(),
            })?;
        let data = self.take_len(n, "joblib array data")?.to_vec();
        self.alloc(Obj::JoblibArray { state, data })
    }

    /// (element count, item size, is object dtype, has alignment padding) of a wrapper's state.
    fn joblib_layout(&mut self, state: Value) -> Result<(u64, u64, bool, bool), PickleError> {
        // Borrow the heap as a read-only Pickle view without copying it.
        let view = Pickle {
            heap: std::mem::take(&mut self.heap),
            root: Value::None,
            protocol: None,
            joblib: true,
        };
        let result = self.layout_in(&view, state);
        self.heap = view.heap;
        result
    }

    fn layout_in(
        &self,
        view: &Pickle,
        state: Value,
    ) -> Result<(u64, u64, bool, bool), PickleError> {
        let bad = |r: &str| PickleError::Malformed {
            pos: self.pos,
            reason: format!("joblib array wrapper: {r}"),
        };
        let shape = view
            .dict_get(state, "shape")
            .ok_or_else(|| bad("no shape"))?;
        let dims = view.seq(shape).ok_or_else(|| bad("shape is not a tuple"))?;
        let mut count: u64 = 1;
        for d in dims {
            match d {
                Value::Int(n) if *n >= 0 => {
                    count = count
                        .checked_mul(*n as u64)
                        .ok_or_else(|| bad("shape overflows"))?
                }
                _ => return Err(bad("shape holds a non-integer")),
            }
        }
        let dtype = view
            .dict_get(state, "dtype")
            .ok_or_else(|| bad("no dtype"))?;
        let descr = match view.obj(dtype) {
            Some(Obj::Object { args, .. }) => view
                .seq(*args)
                .and_then(|a| a.first().copied())
                .and_then(|d| view.str(d)),
            _ => None,
        }
        .ok_or_else(|| bad("dtype is not numpy.dtype(...)"))?;
        // numpy names the object dtype `O8` (its pointer size) when pickling it, `O` or `|O` elsewhere.
        let object = matches!(
            descr.trim_start_matches(['<', '>', '|', '=']),
            "O" | "O4" | "O8"
        );
        let itemsize = if object {
            0
        } else {
            dtype_itemsize(descr).ok_or_else(|| bad(&format!("unsupported dtype {descr:?}")))?
        };
        let aligned = view
            .dict_get(state, "numpy_array_alignment_bytes")
            .is_some_and(|v| v != Value::None);
        Ok((count, itemsize, object, aligned))
    }
}

/// Bytes per element of a numpy dtype string such as `f8`, `<i4`, `b1`.
pub fn dtype_itemsize(descr: &str) -> Option<u64> {
    let d = descr.trim_start_matches(['<', '>', '|', '=']);
    // By char, not byte: the descr comes from untrusted input and may start with a multi-byte char.
    let mut chars = d.chars();
    let kind = chars.next()?;
    let size: u64 = chars.as_str().parse().ok()?;
    match kind {
        // `V<n>`: record arrays such as a fitted tree's `nodes`.
        'f' | 'i' | 'u' | 'b' | 'c' | 'M' | 'm' | 'V' => Some(size),
        _ => None,
    }
}

/// Value of a little-endian two's complement integer (LONG1/LONG4), if it fits in i64.
fn long_value(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() {
        return Some(0);
    }
    if bytes.len() > 8 {
        return None;
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut a = if negative { [0xffu8; 8] } else { [0u8; 8] };
    a[..bytes.len()].copy_from_slice(bytes);
    Some(i64::from_le_bytes(a))
}

/// Decodes Python's `raw-unicode-escape`: each byte is a Latin-1 character except `\uXXXX` and
/// `\UXXXXXXXX`, which name a code point (protocol 0 writes a backslash itself as `\u005c`).
fn raw_unicode_escape(line: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let c = line[i];
        let digits = match (c, line.get(i + 1)) {
            (b'\\', Some(b'u')) => 4,
            (b'\\', Some(b'U')) => 8,
            _ => {
                out.push(char::from(c));
                i += 1;
                continue;
            }
        };
        let hex = std::str::from_utf8(line.get(i + 2..i + 2 + digits)?).ok()?;
        let code = u32::from_str_radix(hex, 16).ok()?;
        // Lone surrogates (Python allows them) have no char: keep them visible, as the lossy
        // BINUNICODE path does.
        out.push(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
        i += 2 + digits;
    }
    Some(out)
}

/// Undoes Python 2's repr quoting of a protocol-0 STRING (simple escapes only).
fn unquote(line: &[u8]) -> Option<Vec<u8>> {
    let q = *line.first()?;
    if line.len() < 2 || (q != b'\'' && q != b'"') || line[line.len() - 1] != q {
        return None;
    }
    let body = &line[1..line.len() - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *body.get(i + 1)?;
        i += 2;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'\\' | b'\'' | b'"' => out.push(e),
            b'x' => {
                let h = std::str::from_utf8(body.get(i..i + 2)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_protocol_2_dict_with_memo_and_setitems_reads_back() {
        // pickle.dumps({'a': [1, 2.5, None], 'b': True}, protocol=2)
        let p =
            b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00Ne\
X\x01\x00\x00\x00bq\x03\x88u.";
        let pk = parse(p).unwrap();
        assert_eq!(pk.protocol, Some(2));
        let a = pk.dict_get(pk.root, "a").unwrap();
        assert_eq!(
            pk.seq(a).unwrap(),
            &[Value::Int(1), Value::Float(2.5), Value::None]
        );
        assert_eq!(pk.dict_get(pk.root, "b"), Some(Value::Bool(true)));
    }

    #[test]
    fn globals_are_names_and_calls_are_records() {
        // pickle.dumps(collections.OrderedDict(), protocol=0) style: GLOBAL + REDUCE
        let p = b"ccollections\nOrderedDict\n(tR.";
        let pk = parse(p).unwrap();
        assert_eq!(pk.describe(pk.root), "collections.OrderedDict");
    }

    #[test]
    fn truncated_and_garbage_inputs_are_errors_not_panics() {
        let inputs: [&[u8]; 8] = [
            b"",
            b"\x80",
            b"\x80\x05\x95",
            b"X\xff\xff\xff\xff",
            b"(t",
            b"e",
            b"\xff",
            b"h\x07.",
        ];
        for i in inputs {
            assert!(parse(i).is_err(), "{i:?}");
        }
    }

    #[test]
    fn a_joblib_dtype_starting_with_a_multibyte_char_is_an_error() {
        // Found by the fuzzer: the dtype name was split at byte 1, inside 'é'.
        let p = b"\x80\x02cjoblib.numpy_pickle\nNumpyArrayWrapper\nq\x00)\x81q\x01}q\x02(X\x08\x00\x00\x00subclassq\x03NX\x05\x00\x00\x00shapeq\x04K\x01\x85q\x05X\x05\x00\x00\x00orderq\x06X\x01\x00\x00\x00Cq\x07X\x05\x00\x00\x00dtypeq\x08cnumpy\ndtype\nq\tX\x03\x00\x00\x00\xc3\xa98q\n\x89\x88\x87q\x0bRq\x0c(K\x03X\x01\x00\x00\x00<q\rNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x0ebX\n\x00\x00\x00allow_mmapq\x0f\x89ub.";
        let err = parse(p).unwrap_err().to_string();
        assert!(err.contains("unsupported dtype \"é8\""), "{err}");
        assert_eq!(dtype_itemsize("é8"), None);
        assert_eq!(dtype_itemsize("<f8"), Some(8));
        assert_eq!(dtype_itemsize("|b1"), Some(1));
    }

    #[test]
    fn a_big_long_is_kept_as_bytes() {
        let p = b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.";
        let pk = parse(p).unwrap();
        assert!(matches!(pk.obj(pk.root), Some(Obj::BigInt(b)) if b.len() == 9));
        assert_eq!(long_value(&[0xff]), Some(-1));
        assert_eq!(long_value(&[0x00, 0x80]), Some(-32768));
    }

    #[test]
    fn protocol_0_strings_and_ints_read() {
        let p = b"(S'a\\nb'\nI01\nI42\nF1.5\nl.";
        let pk = parse(p).unwrap();
        let items = pk.seq(pk.root).unwrap();
        assert!(matches!(pk.obj(items[0]), Some(Obj::Bytes(b)) if b == b"a\nb"));
        assert_eq!(
            &items[1..],
            &[Value::Bool(true), Value::Int(42), Value::Float(1.5)]
        );
    }

    /// `]` then `(` + `)`×1000 + `e` repeated: each byte one empty tuple appended to a list,
    /// about 100 heap bytes per input byte without a budget.
    fn tuples_appended(bytes: usize) -> Vec<u8> {
        let mut p = b"\x80\x02]".to_vec();
        while p.len() < bytes {
            p.push(b'(');
            p.extend(std::iter::repeat_n(b')', 1000));
            p.push(b'e');
        }
        p.push(b'.');
        p
    }

    #[test]
    fn a_small_pickle_asking_for_gigabytes_stops_at_the_heap_budget() {
        // 20 MB of empty tuples would need ~2 GB of heap; the budget is 16 × 20 MB = 320 MB, capped
        // at 256 MiB, and the VM must stop there with a limit error, not abort the process.
        let p = tuples_appended(20 << 20);
        let err = parse(&p).unwrap_err();
        assert!(matches!(err, PickleError::Limit { .. }), "{err}");
        assert!(
            err.to_string().contains("more than 256 MiB of memory"),
            "{err}"
        );
        assert_eq!(heap_budget(p.len()), HEAP_CAP);
    }

    #[test]
    fn the_heap_budget_counts_objects_memo_entries_and_appended_items() {
        let small = tuples_appended(10_000);
        assert!(parse_with_budget(&small, 32 << 20).is_ok());
        let err = parse_with_budget(&small, 100_000).unwrap_err();
        assert!(matches!(err, PickleError::Limit { .. }), "{err}");
        // MEMOIZE of one value, many times: only new memo indices cost.
        let mut memo = b"\x80\x04N".to_vec();
        memo.extend(std::iter::repeat_n(0x94u8, 10_000));
        memo.push(b'.');
        assert!(matches!(
            parse_with_budget(&memo, 100_000),
            Err(PickleError::Limit { .. })
        ));
        let mut same = b"\x80\x02N".to_vec();
        for _ in 0..10_000 {
            same.extend_from_slice(b"q\x00");
        }
        same.push(b'.');
        assert!(parse_with_budget(&same, 100_000).is_ok());
        assert_eq!(heap_budget(10), 32 << 20);
    }

    #[test]
    fn protocol_0_unicode_is_raw_unicode_escape() {
        // pickle.dumps(['a\\b\né', 'x\U0001f600'], protocol=0)
        let p = b"(lp0\nVa\\u005cb\\u000a\xe9\np1\naVx\\U0001f600\np2\na.";
        let pk = parse(p).unwrap();
        let items = pk.seq(pk.root).unwrap();
        assert_eq!(pk.str(items[0]), Some("a\\b\n\u{e9}"));
        assert_eq!(pk.str(items[1]), Some("x\u{1f600}"));
        assert!(parse(b"V\\u12\n.").is_err());
    }
}
