//! A checkpoint directory: `config.json` plus one or more memory-mapped safetensors files.
//! Headers are parsed and checked up front (sizes, offsets, dtypes); tensor bytes are only
//! touched when a caller asks for a tensor, so a 7B model is never read into RAM whole.
//!
//! Format facts: safetensors `README.md` (8-byte little-endian header length, JSON header,
//! contiguous data section, `data_offsets` relative to the data section).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::Value;

use crate::dtype::{self, DType};
use crate::error::{Error, IoContext, Result};
use crate::model::arch::Arch;
use crate::model::config::ModelConfig;

/// Largest header we accept; real headers are well under 1 MiB.
const MAX_HEADER_BYTES: u64 = 100 << 20;
pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const SINGLE_FILE: &str = "model.safetensors";

/// Header entry of one tensor.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// The dtype as the header spells it ("BF16", "I8", ...).
    pub dtype_name: String,
    /// `Some` for the dtypes hy-quant computes with.
    pub dtype: Option<DType>,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
    pub shard: usize,
}

struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// An opened checkpoint directory.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub arch: Arch,
    shards: Vec<Shard>,
    /// Every tensor, sorted by name.
    tensors: BTreeMap<String, TensorInfo>,
    /// Whether the weights came with `model.safetensors.index.json`.
    pub sharded: bool,
}

/// A borrowed tensor: header facts plus its bytes inside the mmap.
pub struct TensorView<'a> {
    pub name: &'a str,
    pub info: &'a TensorInfo,
    pub file: &'a Path,
    pub bytes: &'a [u8],
}

impl TensorView<'_> {
    /// The float dtype, or an error naming the tensor when it is not BF16/F16/F32.
    pub fn float_dtype(&self) -> Result<DType> {
        match self.info.dtype {
            Some(d) if d.is_float() => Ok(d),
            _ => Err(Error::tensor(
                self.name,
                format!(
                    "unsupported dtype {} in {}; expected BF16, F16 or F32",
                    self.info.dtype_name,
                    self.file.display()
                ),
            )),
        }
    }

    /// Decodes to f32 and refuses NaN/Inf, naming the tensor and the first bad index.
    pub fn to_f32_finite(&self) -> Result<Vec<f32>> {
        let values = dtype::to_f32(self.float_dtype()?, self.bytes);
        use rayon::prelude::*;
        match values.par_iter().position_first(|v| !v.is_finite()) {
            Some(i) => Err(self.non_finite_error(i, values[i])),
            None => Ok(values),
        }
    }

    /// Refuses NaN/Inf without decoding the tensor into a new buffer (embeddings are large).
    pub fn check_finite(&self) -> Result<()> {
        let dtype = self.float_dtype()?;
        let size = dtype.size();
        // Exponent all ones <=> NaN or Inf, for every IEEE float type.
        let bad = |i: usize| -> bool {
            let b = &self.bytes[i * size..(i + 1) * size];
            match dtype {
                DType::BF16 => u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80,
                DType::F16 => u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00,
                _ => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000,
            }
        };
        use rayon::prelude::*;
        match (0..self.bytes.len() / size)
            .into_par_iter()
            .find_first(|&i| bad(i))
        {
            None => Ok(()),
            Some(i) => {
                let v = dtype::to_f32(dtype, &self.bytes[i * size..(i + 1) * size])[0];
                Err(self.non_finite_error(i, v))
            }
        }
    }

    fn non_finite_error(&self, index: usize, value: f32) -> Error {
        Error::tensor(
            self.name,
            format!(
                "holds a non-finite value ({value}) at flat index {index} in {}; refusing to quantize it",
                self.file.display()
            ),
        )
    }
}

impl Checkpoint {
    /// Opens `dir`: parses config.json, resolves the architecture and maps every shard.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Missing {
                path: dir.to_path_buf(),
                what: "model directory".into(),
            });
        }
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let arch = Arch::from_config(config.clone())?;
        let index_path = dir.join(INDEX_FILE);
        let (files, sharded) = if index_path.is_file() {
            (shard_files_from_index(&index_path)?, true)
        } else if dir.join(SINGLE_FILE).is_file() {
            (vec![SINGLE_FILE.to_string()], false)
        } else {
            let mut found: Vec<String> = std::fs::read_dir(dir)
                .at(dir)?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(Error::Missing {
                    path: dir.join(SINGLE_FILE),
                    what: format!("no {SINGLE_FILE}, {INDEX_FILE} or other *.safetensors file"),
                });
            }
            let sharded = found.len() > 1;
            (found, sharded)
        };

        let mut shards = Vec::with_capacity(files.len());
        let mut tensors = BTreeMap::new();
        for (i, name) in files.iter().enumerate() {
            let path = dir.join(name);
            let file = File::open(&path).at(&path)?;
            // SAFETY: the file is opened read-only; hy-quant never writes into an input
            // checkpoint. A concurrent external truncation would be a user error we cannot
            // guard against with mmap (same contract as safetensors/candle).
            let map = unsafe { Mmap::map(&file) }.at(&path)?;
            for (tname, info) in parse_header(&path, &map, i)? {
                if tensors.contains_key(&tname) {
                    return Err(Error::Safetensors {
                        path: path.clone(),
                        msg: format!("tensor {tname} is stored in more than one file"),
                    });
                }
                tensors.insert(tname, info);
            }
            shards.push(Shard { path, map });
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            arch,
            shards,
            tensors,
            sharded,
        })
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let (key, info) = self.tensors.get_key_value(name).ok_or_else(|| {
            Error::tensor(
                name,
                format!("missing from the checkpoint in {}", self.dir.display()),
            )
        })?;
        let shard = &self.shards[info.shard];
        Ok(TensorView {
            name: key,
            info,
            file: &shard.path,
            bytes: &shard.map[info.start..info.end],
        })
    }

    /// Tells the kernel the bytes of `name` will not be read again soon, so a streaming pass
    /// over a 7B model does not keep the whole file resident (mapped file pages count towards
    /// RSS until dropped). Purely advisory: a later read of the tensor still works.
    pub fn release(&self, name: &str) {
        let Some(info) = self.tensors.get(name) else {
            return;
        };
        let page = 4096;
        let start = info.start / page * page;
        let len = info.end - start;
        // SAFETY: the map is read-only and file-backed; MADV_DONTNEED only drops clean pages,
        // which the kernel re-reads from the file if they are touched again. No reference to
        // these bytes is held by the caller past this point, and even if one were, it would
        // see the same file contents.
        #[cfg(unix)]
        unsafe {
            let _ = self.shards[info.shard].map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                start,
                len,
            );
        }
    }

    /// Paths of the weight files, in order.
    pub fn shard_paths(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// A cheap identity of the checkpoint's content for resume checks: config.json's sha256
    /// and each weight file's name, size and modification time (hashing gigabytes of weights
    /// to decide whether to reuse a partial result would cost more than it saves).
    pub fn identity(&self) -> Result<Value> {
        let mut shards = Vec::new();
        for p in self.shard_paths() {
            let meta = std::fs::metadata(p).at(p)?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos().to_string());
            shards.push(serde_json::json!([
                p.file_name().map(|n| n.to_string_lossy().into_owned()),
                meta.len(),
                mtime
            ]));
        }
        let config_sha = crate::io::sha256_file(&self.config.path)?.1;
        Ok(serde_json::json!({
            "model_config_sha256": config_sha,
            "model_shards": shards,
        }))
    }

    /// Total bytes of tensor data.
    pub fn weight_bytes(&self) -> u64 {
        self.tensors
            .values()
            .map(|t| (t.end - t.start) as u64)
            .sum()
    }

    /// Dtype of the model's weights: config's torch_dtype, else the embedding's dtype.
    pub fn model_dtype(&self) -> Result<DType> {
        let embed = self.tensor(&self.arch.embed_tokens().name)?.float_dtype()?;
        Ok(self.config.dtype.unwrap_or(embed))
    }

    /// Checks every tensor the architecture needs is present with the right shape and a float
    /// dtype. Reports the first problem, naming the tensor and the file.
    pub fn validate(&self) -> Result<()> {
        for spec in self.arch.expected_tensors() {
            let view = self.tensor(&spec.name)?;
            if view.info.shape != spec.shape {
                return Err(Error::tensor(
                    &spec.name,
                    format!(
                        "has shape {:?} in {}, expected {:?} from config.json",
                        view.info.shape,
                        view.file.display(),
                        spec.shape
                    ),
                ));
            }
            view.float_dtype()?;
        }
        if self.config.tie_word_embeddings {
            if let Some(info) = self.info("lm_head.weight") {
                let want = self.arch.lm_head().shape;
                if info.shape != want {
                    return Err(Error::tensor(
                        "lm_head.weight",
                        format!("has shape {:?}, expected {want:?}", info.shape),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Top-level files other than weights and config that a quantized copy should carry
    /// (tokenizer, generation config, chat template, licence, custom code).
    pub fn companion_files(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).at(&self.dir)? {
            let entry = entry.at(&self.dir)?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_weight = [
                ".safetensors",
                ".bin",
                ".pt",
                ".pth",
                ".gguf",
                ".h5",
                ".msgpack",
            ]
            .iter()
            .any(|ext| name.ends_with(ext));
            let ours = matches!(
                name.as_str(),
                "config.json" | INDEX_FILE | "manifest.json" | "quantize_config.json"
            );
            if path.is_file() && !is_weight && !ours && !name.starts_with('.') {
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    }
}

fn shard_files_from_index(index_path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index_path).at(index_path)?;
    let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: index_path.to_path_buf(),
        source,
    })?;
    let map = value
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::config(index_path, "missing object `weight_map`"))?;
    let mut files: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::config(
                index_path,
                format!("weight_map[{tensor:?}] is not a file name"),
            )
        })?;
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(Error::config(
                index_path,
                format!("weight_map[{tensor:?}] = {file:?} leaves the directory"),
            ));
        }
        if !files.iter().any(|f| f == file) {
            files.push(file.to_string());
        }
    }
    files.sort();
    for f in &files {
        let p = index_path.with_file_name(f);
        if !p.is_file() {
            return Err(Error::Missing {
                path: p,
                what: format!("shard listed in {}", index_path.display()),
            });
        }
    }
    Ok(files)
}

/// Parses and checks a safetensors header against the file's real length.
fn parse_header(path: &Path, map: &[u8], shard: usize) -> Result<Vec<(String, TensorInfo)>> {
    let bad = |msg: String| Error::Safetensors {
        path: path.to_path_buf(),
        msg,
    };
    if map.len() < 8 {
        return Err(bad(format!(
            "file is {} bytes, shorter than the 8-byte header length",
            map.len()
        )));
    }
    let n = u64::from_le_bytes(map[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER_BYTES || 8 + n > map.len() as u64 {
        return Err(bad(format!(
            "header length {n} does not fit in a {}-byte file (truncated or not safetensors)",
            map.len()
        )));
    }
    let header_end = 8 + n as usize;
    let header: Value = serde_json::from_slice(&map[8..header_end])
        .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    let obj = header
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;
    let data_len = map.len() - header_end;
    let mut out = Vec::with_capacity(obj.len());
    let mut ranges = Vec::with_capacity(obj.len());
    for (name, entry) in obj {
        if name == "__metadata__" {
            continue;
        }
        let field = |k: &str| {
            entry
                .get(k)
                .ok_or_else(|| bad(format!("tensor {name}: missing `{k}`")))
        };
        let dtype_name = field("dtype")?
            .as_str()
            .ok_or_else(|| bad(format!("tensor {name}: dtype is not a string")))?
            .to_string();
        let shape: Vec<usize> = field("shape")?
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .ok_or_else(|| bad(format!("tensor {name}: shape is not a list of integers")))?;
        let offs: Vec<usize> = field("data_offsets")?
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .filter(|v: &Vec<usize>| v.len() == 2)
            .ok_or_else(|| bad(format!("tensor {name}: data_offsets is not [begin, end]")))?;
        let (begin, end) = (offs[0], offs[1]);
        if begin > end || end > data_len {
            return Err(bad(format!(
                "tensor {name}: data_offsets [{begin}, {end}] exceed the {data_len}-byte data section (file truncated?)"
            )));
        }
        let dtype = DType::from_st_name(&dtype_name);
        let elem = element_size(&dtype_name)
            .ok_or_else(|| bad(format!("tensor {name}: unknown dtype {dtype_name:?}")))?;
        let numel = shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
        if numel.and_then(|n| n.checked_mul(elem)) != Some(end - begin) {
            return Err(bad(format!(
                "tensor {name}: {} bytes for shape {shape:?} of {dtype_name}",
                end - begin
            )));
        }
        ranges.push((begin, end));
        out.push((
            name.clone(),
            TensorInfo {
                dtype_name,
                dtype,
                shape,
                start: header_end + begin,
                end: header_end + end,
                shard,
            },
        ));
    }
    ranges.sort_unstable();
    let mut cursor = 0;
    for (b, e) in &ranges {
        if *b != cursor {
            return Err(bad(format!(
                "data section has a hole or overlap at byte {cursor}"
            )));
        }
        cursor = *e;
    }
    if cursor != data_len {
        return Err(bad(format!(
            "data section is {data_len} bytes but tensors cover {cursor} (file truncated or padded)"
        )));
    }
    Ok(out)
}

fn element_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}
