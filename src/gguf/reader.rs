//! GGUF container parser over a read-only memory map.
//!
//! Layout (ggml `docs/gguf.md`; gguf-py `gguf/gguf_reader.py` is an independent reader of the
//! same format), all little-endian:
//!
//! ```text
//! u32 magic "GGUF" | u32 version (2 or 3) | u64 tensor_count | u64 kv_count
//! kv_count x  { string key | u32 value_type | value }
//! tensor_count x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
//! padding to `general.alignment` (default 32) | tensor data (offsets relative to here)
//! string = u64 byte length + UTF-8 bytes;  array = u32 elem_type + u64 count + elems
//! ```
//!
//! `ne[0]` is the fastest-varying dimension, so the row-major (PyTorch) shape is `ne` reversed.
//! Version 1 used 32-bit counts and is not supported (llama.cpp dropped it as well).
//!
//! Every length and count read from the file is checked against the bytes that remain before
//! anything is allocated, so a corrupt or hostile file yields an error, never a panic or a huge
//! allocation.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

/// "GGUF" read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;
/// Arrays nested deeper than this are rejected (real files use depth 1).
const MAX_ARRAY_DEPTH: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: cannot read GGUF file: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: not a GGUF file: expected magic \"GGUF\" (0x46554747 little-endian) at byte 0, found {found:#010x}",
        path.display()
    )]
    BadMagic { path: PathBuf, found: u32 },
    #[error("{}: unsupported GGUF version {version}: supported versions are 2 and 3{hint}", path.display())]
    UnsupportedVersion {
        path: PathBuf,
        version: u32,
        hint: &'static str,
    },
    #[error(
        "{}: file is truncated: reading {what} at byte {offset} needs {needed} bytes but only {available} remain (file is {file_len} bytes)",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
        file_len: u64,
    },
    #[error("{}: invalid {what}: {detail}", path.display())]
    Invalid {
        path: PathBuf,
        what: String,
        detail: String,
    },
    #[error(
        "{}: tensor '{tensor}': unknown ggml tensor type id {type_id} (this reader knows ids {known})",
        path.display()
    )]
    UnknownTensorType {
        path: PathBuf,
        tensor: String,
        type_id: u32,
        known: String,
    },
    #[error(
        "{}: tensor '{tensor}': data at bytes [{start}, {end}) lies past the end of the file ({file_len} bytes)",
        path.display()
    )]
    TensorOutOfBounds {
        path: PathBuf,
        tensor: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    #[error(
        "{}: unsupported architecture '{arch}' (general.architecture); supported: {}",
        path.display(),
        supported.join(", ")
    )]
    UnsupportedArchitecture {
        path: PathBuf,
        arch: String,
        supported: Vec<&'static str>,
    },
    #[error("{}: metadata key '{key}' is missing", path.display())]
    MissingKey { path: PathBuf, key: String },
    #[error("{}: metadata key '{key}': expected {expected}, found {found}", path.display())]
    MetaType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
}

/// ggml tensor types (`enum ggml_type` in ggml `include/ggml.h`), with their block geometry
/// (`ggml_type_traits` in `ggml/src/ggml.c`: `blck_size`, `type_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    Iq2Xxs,
    Iq2Xs,
    Iq3Xxs,
    Iq1S,
    Iq4Nl,
    Iq3S,
    Iq2S,
    Iq4Xs,
    I8,
    I16,
    I32,
    I64,
    F64,
    Iq1M,
    Bf16,
    Tq1_0,
    Tq2_0,
    Mxfp4,
}

/// (type, id, name, elements per block, bytes per block)
const TYPE_TABLE: &[(GgmlType, u32, &str, u64, u64)] = &[
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "Q8_1", 32, 40),
    (GgmlType::Q2K, 10, "Q2_K", 256, 84),
    (GgmlType::Q3K, 11, "Q3_K", 256, 110),
    (GgmlType::Q4K, 12, "Q4_K", 256, 144),
    (GgmlType::Q5K, 13, "Q5_K", 256, 176),
    (GgmlType::Q6K, 14, "Q6_K", 256, 210),
    (GgmlType::Q8K, 15, "Q8_K", 256, 292),
    (GgmlType::Iq2Xxs, 16, "IQ2_XXS", 256, 66),
    (GgmlType::Iq2Xs, 17, "IQ2_XS", 256, 74),
    (GgmlType::Iq3Xxs, 18, "IQ3_XXS", 256, 98),
    (GgmlType::Iq1S, 19, "IQ1_S", 256, 50),
    (GgmlType::Iq4Nl, 20, "IQ4_NL", 32, 18),
    (GgmlType::Iq3S, 21, "IQ3_S", 256, 110),
    (GgmlType::Iq2S, 22, "IQ2_S", 256, 82),
    (GgmlType::Iq4Xs, 23, "IQ4_XS", 256, 136),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (GgmlType::Iq1M, 29, "IQ1_M", 256, 56),
    (GgmlType::Bf16, 30, "BF16", 1, 2),
    (GgmlType::Tq1_0, 34, "TQ1_0", 256, 54),
    (GgmlType::Tq2_0, 35, "TQ2_0", 256, 66),
    (GgmlType::Mxfp4, 39, "MXFP4", 32, 17),
];

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        TYPE_TABLE.iter().find(|e| e.1 == id).map(|e| e.0)
    }
    fn entry(self) -> &'static (GgmlType, u32, &'static str, u64, u64) {
        TYPE_TABLE
            .iter()
            .find(|e| e.0 == self)
            .expect("every GgmlType variant is in TYPE_TABLE")
    }
    pub fn id(self) -> u32 {
        self.entry().1
    }
    pub fn name(self) -> &'static str {
        self.entry().2
    }
    /// Elements per block.
    pub fn block_size(self) -> u64 {
        self.entry().3
    }
    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.entry().4
    }
    fn known_ids() -> String {
        TYPE_TABLE
            .iter()
            .map(|e| format!("{}={}", e.1, e.2))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value (`gguf_type` in ggml `docs/gguf.md`).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    pub fn type_name(&self) -> String {
        match self {
            MetaValue::U8(_) => "u8".into(),
            MetaValue::I8(_) => "i8".into(),
            MetaValue::U16(_) => "u16".into(),
            MetaValue::I16(_) => "i16".into(),
            MetaValue::U32(_) => "u32".into(),
            MetaValue::I32(_) => "i32".into(),
            MetaValue::F32(_) => "f32".into(),
            MetaValue::Bool(_) => "bool".into(),
            MetaValue::String(_) => "string".into(),
            MetaValue::Array(a) => format!(
                "array[{}] of {}",
                a.len(),
                a.first().map_or("?".into(), |v| v.type_name())
            ),
            MetaValue::U64(_) => "u64".into(),
            MetaValue::I64(_) => "i64".into(),
            MetaValue::F64(_) => "f64".into(),
        }
    }
    /// Any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    /// Floats and integers, as f64. An f32 is widened through its shortest decimal form, so
    /// 1e-6f32 becomes 1e-6 rather than 9.999999974752427e-7 (what a config.json should show).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(f32_to_f64_shortest(v)),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// f32 -> f64 through the shortest decimal that round-trips the f32.
pub fn f32_to_f64_shortest(v: f32) -> f64 {
    if !v.is_finite() {
        return v as f64;
    }
    format!("{v:e}").parse::<f64>().unwrap_or(v as f64)
}

/// One tensor's header entry.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the fastest-varying (innermost) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Absolute offset of the data in the file.
    pub abs_offset: u64,
    /// Size of the data in bytes.
    pub byte_len: u64,
}

impl TensorInfo {
    /// Row-major (PyTorch / safetensors) shape: the GGUF dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Cursor<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                offset: self.pos as u64,
                needed: n,
                available: self.remaining(),
                file_len: self.buf.len() as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn invalid(&self, what: String, detail: String) -> GgufError {
        GgufError::Invalid {
            path: self.path.to_path_buf(),
            what,
            detail,
        }
    }
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > self.remaining() {
            return Err(self.invalid(
                what(),
                format!(
                    "string length {len} at byte {} exceeds the {} bytes left in the file (truncated or corrupt file)",
                    self.pos - 8,
                    self.remaining()
                ),
            ));
        }
        let start = self.pos;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| {
            self.invalid(
                what(),
                format!("string at byte {start} is not valid UTF-8: {e}"),
            )
        })
    }

    /// Minimum encoded size of one value of a type, used to bound counts before allocating.
    fn min_size(value_type: u32) -> u64 {
        match value_type {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            _ => 1,
        }
    }

    fn value(&mut self, value_type: u32, key: &str, depth: u32) -> Result<MetaValue, GgufError> {
        let what = || format!("value of metadata key '{key}'");
        Ok(match value_type {
            0 => MetaValue::U8(self.array::<1>(&what)?[0]),
            1 => MetaValue::I8(self.array::<1>(&what)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => {
                let b = self.array::<1>(&what)?[0];
                if b > 1 {
                    return Err(self.invalid(
                        format!("metadata key '{key}'"),
                        format!("bool value must be 0 or 1, found {b}"),
                    ));
                }
                MetaValue::Bool(b == 1)
            }
            8 => MetaValue::String(self.string(&what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.invalid(
                        format!("metadata key '{key}'"),
                        format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels"),
                    ));
                }
                let elem_type = self.u32(&|| format!("array element type of '{key}'"))?;
                if elem_type > 12 {
                    return Err(self.invalid(
                        format!("metadata key '{key}'"),
                        format!("unknown array element type {elem_type} (expected 0..=12)"),
                    ));
                }
                let count = self.u64(&|| format!("array length of '{key}'"))?;
                let max = self.remaining() / Self::min_size(elem_type);
                if count > max {
                    return Err(self.invalid(
                        format!("metadata key '{key}'"),
                        format!(
                            "array claims {count} elements but the {} bytes left in the file hold at most {max} (truncated or corrupt file)",
                            self.remaining()
                        ),
                    ));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_type, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(u64::from_le_bytes(self.array(&what)?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(&what)?)),
            other => {
                return Err(self.invalid(
                    format!("metadata key '{key}'"),
                    format!("unknown value type {other} (expected 0..=12)"),
                ))
            }
        })
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file (header, metadata and tensor infos; data stays mapped).
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 4 {
            return Err(GgufError::Truncated {
                path: path.to_path_buf(),
                what: "magic".into(),
                offset: 0,
                needed: 4,
                available: len,
                file_len: len,
            });
        }
        // SAFETY: the map is read-only and private to this struct; a file truncated by another
        // process while mapped is outside what any mmap reader can defend against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, mmap)
    }

    fn parse(path: &Path, mmap: Mmap) -> Result<Self, GgufError> {
        let mut c = Cursor {
            path,
            buf: &mmap[..],
            pos: 0,
        };
        let magic = c.u32(&|| "magic".into())?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic {
                path: path.to_path_buf(),
                found: magic,
            });
        }
        let version = c.u32(&|| "version".into())?;
        if version != 2 && version != 3 {
            let hint = if version == 1 {
                " (version 1 used 32-bit counts; re-convert the model with a current llama.cpp)"
            } else if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
                " (this looks like a big-endian GGUF, which is not supported)"
            } else {
                ""
            };
            return Err(GgufError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
                hint,
            });
        }
        let tensor_count = c.u64(&|| "tensor count".into())?;
        let kv_count = c.u64(&|| "metadata key/value count".into())?;
        // A kv entry needs at least 8 (key len) + 4 (type) + 1 bytes; a tensor info at least
        // 8 + 4 + 4 + 8 bytes.
        if tensor_count > c.remaining() / 24 {
            return Err(c.invalid(
                "header".into(),
                format!(
                    "tensor count {tensor_count} cannot fit in the {} bytes left in the file (truncated or corrupt file)",
                    c.remaining()
                ),
            ));
        }

        if kv_count > c.remaining() / 13 {
            return Err(c.invalid(
                "header".into(),
                format!(
                    "metadata count {kv_count} cannot fit in the {} bytes left in the file (truncated or corrupt file)",
                    c.remaining()
                ),
            ));
        }
        let mut metadata = BTreeMap::new();
        for i in 0..kv_count {
            let key = c.string(&|| format!("key of metadata entry {i}"))?;
            let vt = c.u32(&|| format!("value type of metadata key '{key}'"))?;
            let value = c.value(vt, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(c.invalid(
                    format!("metadata key '{key}'"),
                    "the key occurs twice".into(),
                ));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(c.invalid(
                        "metadata key 'general.alignment'".into(),
                        format!("expected a power of two between 1 and 2^20, found {v:?}"),
                    ))
                }
            },
        };

        let mut infos = Vec::with_capacity(tensor_count as usize);
        for i in 0..tensor_count {
            let name = c.string(&|| format!("name of tensor {i}"))?;
            let n_dims = c.u32(&|| format!("dimension count of tensor '{name}'"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.invalid(
                    format!("tensor '{name}'"),
                    format!("has {n_dims} dimensions; expected 1..={MAX_DIMS}"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                dims.push(c.u64(&|| format!("dimension {d} of tensor '{name}'"))?);
            }
            let type_id = c.u32(&|| format!("type of tensor '{name}'"))?;
            let offset = c.u64(&|| format!("data offset of tensor '{name}'"))?;
            let ggml_type =
                GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    type_id,
                    known: GgmlType::known_ids(),
                })?;
            infos.push((name, dims, ggml_type, offset));
        }

        let file_len = mmap.len() as u64;
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(infos.len());
        let mut seen = std::collections::HashSet::new();
        for (name, dims, ggml_type, offset) in infos {
            let bad = |detail: String| GgufError::Invalid {
                path: path.to_path_buf(),
                what: format!("tensor '{name}'"),
                detail,
            };
            if !seen.insert(name.clone()) {
                return Err(bad("the name occurs twice".into()));
            }
            if dims.contains(&0) {
                return Err(bad(format!("has a zero dimension: ne = {dims:?}")));
            }
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n <= 1 << 48)
                .ok_or_else(|| bad(format!("element count overflows: ne = {dims:?}")))?;
            let bs = ggml_type.block_size();
            if dims[0] % bs != 0 {
                return Err(bad(format!(
                    "row length ne[0] = {} is not a multiple of the {} block size {bs}",
                    dims[0], ggml_type
                )));
            }
            let byte_len = n_elements / bs * ggml_type.type_size();
            if offset % alignment != 0 {
                return Err(bad(format!(
                    "data offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            let start = data_offset.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(byte_len));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len => tensors.push(TensorInfo {
                    name,
                    dims,
                    ggml_type,
                    offset,
                    abs_offset: start,
                    byte_len,
                }),
                _ => {
                    return Err(GgufError::TensorOutOfBounds {
                        path: path.to_path_buf(),
                        tensor: name,
                        start: data_offset.saturating_add(offset),
                        end: data_offset.saturating_add(offset).saturating_add(byte_len),
                        file_len,
                    })
                }
            }
        }

        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// Absolute file offset where the tensor data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
    /// The raw (still quantized) bytes of a tensor; bounds were checked when parsing.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        &self.mmap[t.abs_offset as usize..(t.abs_offset + t.byte_len) as usize]
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }
    fn missing(&self, key: &str) -> GgufError {
        GgufError::MissingKey {
            path: self.path.clone(),
            key: key.into(),
        }
    }
    fn wrong(&self, key: &str, expected: &'static str, v: &MetaValue) -> GgufError {
        GgufError::MetaType {
            path: self.path.clone(),
            key: key.into(),
            expected,
            found: v.type_name(),
        }
    }
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        v.as_str().ok_or_else(|| self.wrong(key, "a string", v))
    }
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        v.as_u64()
            .ok_or_else(|| self.wrong(key, "a non-negative integer", v))
    }
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        v.as_f64().ok_or_else(|| self.wrong(key, "a number", v))
    }
    /// `Ok(None)` when absent, an error when present with the wrong type.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| self.wrong(key, "a non-negative integer", v))
            })
            .transpose()
    }
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| self.wrong(key, "a number", v)))
            .transpose()
    }
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.wrong(key, "a bool", v)))
            .transpose()
    }
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| self.wrong(key, "a string", v)))
            .transpose()
    }
    /// An array of strings (e.g. `tokenizer.ggml.tokens`); `Ok(None)` when absent.
    pub fn opt_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let arr = v
            .as_array()
            .ok_or_else(|| self.wrong(key, "an array of strings", v))?;
        arr.iter()
            .map(|e| {
                e.as_str()
                    .ok_or_else(|| self.wrong(key, "an array of strings", v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
    /// An array of integers (e.g. `tokenizer.ggml.token_type`); `Ok(None)` when absent.
    pub fn opt_int_array(&self, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let arr = v
            .as_array()
            .ok_or_else(|| self.wrong(key, "an array of integers", v))?;
        arr.iter()
            .map(|e| {
                e.as_i64()
                    .ok_or_else(|| self.wrong(key, "an array of integers", v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}
