//! `convert --from-gguf`: a GGUF file -> a Hugging Face checkpoint directory
//! (`config.json`, `generation_config.json`, `tokenizer.json`, `tokenizer_config.json`,
//! `model.safetensors` or `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`).
//!
//! Tensors are dequantized one at a time to f32 (`gguf::dequant`), un-permuted where llama.cpp
//! permuted them (`gguf::names`), rounded to bf16/f16 with round-to-nearest-even (`half`), and
//! streamed into planned shards (`io::ShardWriter`, one tensor in memory at a time).
//! Everything goes to `<out>.hyq-partial/` first and is renamed to
//! `<out>` only when complete, so a crash never leaves a directory that looks finished. The
//! output is deterministic: tensors in a fixed order, no timestamps, sorted JSON keys.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::gguf::config::{build_config, ModelConfig};
use crate::gguf::names::{map_name, unpermute_rows};
use crate::gguf::reader::{GgufError, GgufFile, TensorInfo};
use crate::gguf::tokenizer::build_tokenizer;
use crate::gguf::{dequantize, DequantError};
use crate::io::st_writer::index_json;
use crate::io::staged_dir::write_file;
use crate::io::{plan_shards, PlannedTensor, ShardWriter, StagedDir};

/// HF's default `max_shard_size` ("5GB" = 5 * 10^9 bytes in transformers).
pub const MAX_SHARD_BYTES: u64 = 5_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputDtype {
    Bf16,
    F16,
}

impl OutputDtype {
    /// The name config.json uses (`torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            OutputDtype::Bf16 => "bfloat16",
            OutputDtype::F16 => "float16",
        }
    }
    /// The safetensors header spelling.
    fn st_name(self) -> &'static str {
        match self {
            OutputDtype::Bf16 => "BF16",
            OutputDtype::F16 => "F16",
        }
    }
}

impl std::str::FromStr for OutputDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bf16" | "bfloat16" => Ok(OutputDtype::Bf16),
            "f16" | "fp16" | "float16" => Ok(OutputDtype::F16),
            _ => Err(format!("unknown dtype '{s}' (expected bf16 or f16)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub dtype: OutputDtype,
    /// Replace an existing non-empty output directory (only after the new one is complete).
    pub force: bool,
    /// Bytes per safetensors shard; `None` = HF's 5 GB default.
    pub max_shard_bytes: Option<u64>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            dtype: OutputDtype::Bf16,
            force: false,
            max_shard_bytes: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConvertReport {
    pub out_dir: PathBuf,
    /// `general.architecture` of the input.
    pub architecture: String,
    pub dtype: OutputDtype,
    pub tensors_written: usize,
    pub parameters: u64,
    /// Bytes of all files written.
    pub bytes_written: u64,
    /// File names of the safetensors shards, in order.
    pub shards: Vec<String>,
    /// GGUF tensor type name -> number of tensors of that type in the input.
    pub source_types: BTreeMap<String, usize>,
    /// GGUF tensors deliberately not written (e.g. `rope_freqs.weight`, folded into config).
    pub skipped: Vec<String>,
    /// Tensors whose Q/K rows were un-permuted (llama architecture).
    pub unpermuted: Vec<String>,
    pub tie_word_embeddings: bool,
    /// Finite values that became +-inf when cast to f16 (always 0 for bf16).
    pub f16_overflows: u64,
    pub vocab_size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{}: {source}", path.display())]
    Dequant {
        path: PathBuf,
        #[source]
        source: DequantError,
    },
    #[error("{}: tensor '{tensor}': {detail}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        detail: String,
    },
    #[error("output directory {} already exists and is not empty; pass --force to replace it (it is replaced only after the conversion succeeds)", path.display())]
    OutputExists { path: PathBuf },
    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: writing safetensors: {detail}", path.display())]
    Safetensors { path: PathBuf, detail: String },
    /// Staging, writing or publishing the output directory.
    #[error(transparent)]
    Output(#[from] crate::error::Error),
}

fn io_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> ConvertError + 'a {
    move |source| ConvertError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// One tensor to write: its GGUF source and HF destination.
struct Planned<'a> {
    info: &'a TensorInfo,
    hf_name: String,
    unpermute_heads: Option<usize>,
    shape: Vec<usize>,
}

impl Planned<'_> {
    fn out_bytes(&self) -> u64 {
        self.info.n_elements() * 2
    }
}

/// Sort key giving HF's usual order: embeddings, layers by number, then the rest.
fn order_key(name: &str) -> (u8, usize, String) {
    if let Some(rest) = name.strip_prefix("model.layers.") {
        if let Some((n, tail)) = rest.split_once('.') {
            if let Ok(n) = n.parse::<usize>() {
                return (1, n, tail.to_string());
            }
        }
    }
    let group = if name.starts_with("model.embed_tokens") {
        0
    } else {
        2
    };
    (group, 0, name.to_string())
}

/// Converts `gguf` into an HF checkpoint directory at `out`.
pub fn convert_gguf(
    gguf: &Path,
    out: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertReport, ConvertError> {
    let staged = StagedDir::prepare(out, opts.force, &[]).map_err(|e| match e {
        crate::error::Error::OutputNotOurs { path } => ConvertError::OutputExists { path },
        e => ConvertError::Output(e),
    })?;
    let g = GgufFile::open(gguf)?;
    let cfg = build_config(&g, opts.dtype.torch_name())?;
    let tok = build_tokenizer(&g, cfg.context_length)?;
    if tok.vocab_size != cfg.vocab_size {
        return Err(GgufError::Invalid {
            path: gguf.to_path_buf(),
            what: "tokenizer".into(),
            detail: format!(
                "{} tokens but the embedding has {} rows",
                tok.vocab_size, cfg.vocab_size
            ),
        }
        .into());
    }

    // Plan every tensor before writing anything, so name errors surface first.
    let mut report = ConvertReport {
        out_dir: out.to_path_buf(),
        architecture: cfg.arch.gguf_name().into(),
        dtype: opts.dtype,
        tensors_written: 0,
        parameters: 0,
        bytes_written: 0,
        shards: vec![],
        source_types: BTreeMap::new(),
        skipped: vec![],
        unpermuted: vec![],
        tie_word_embeddings: cfg.tie_word_embeddings,
        f16_overflows: 0,
        vocab_size: cfg.vocab_size,
    };
    let mut plan = Vec::new();
    let mut seen = HashMap::new();
    for t in g.tensors() {
        *report
            .source_types
            .entry(t.ggml_type.name().to_string())
            .or_default() += 1;
        let mapped = map_name(
            cfg.arch.gguf_name(),
            &t.name,
            cfg.num_heads,
            cfg.num_kv_heads,
        )
        .map_err(|detail| ConvertError::Tensor {
            path: gguf.to_path_buf(),
            tensor: t.name.clone(),
            detail,
        })?;
        let Some(m) = mapped else {
            report.skipped.push(t.name.clone());
            continue;
        };
        if let Some(prev) = seen.insert(m.hf_name.clone(), t.name.clone()) {
            return Err(ConvertError::Tensor {
                path: gguf.to_path_buf(),
                tensor: t.name.clone(),
                detail: format!("maps to '{}' like '{prev}'", m.hf_name),
            });
        }
        plan.push(Planned {
            info: t,
            hf_name: m.hf_name,
            unpermute_heads: m.unpermute_heads,
            shape: t.shape(),
        });
    }
    plan.sort_by_key(|p| order_key(&p.hf_name));
    check_shapes(&g, &cfg, &plan)?;

    let max_shard = opts.max_shard_bytes.unwrap_or(MAX_SHARD_BYTES).max(1);

    let mut weight_bytes = 0u64;
    let planned: Vec<PlannedTensor> = plan
        .iter()
        .map(|p| {
            weight_bytes += p.out_bytes();
            PlannedTensor {
                name: p.hf_name.clone(),
                dtype: opts.dtype.st_name().to_string(),
                shape: p.shape.clone(),
                nbytes: p.out_bytes() as usize,
            }
        })
        .collect();
    let shards = plan_shards(planned, max_shard, weight_bytes <= max_shard);
    let dir = staged.path();
    let mut sources = plan.iter();
    for shard in &shards {
        let mut writer = ShardWriter::create(dir, shard.clone())?;
        for _ in &shard.tensors {
            let p = sources.next().expect("shards cover the plan in order");
            let (bytes, overflows) = convert_tensor(&g, p, opts.dtype)?;
            report.f16_overflows += overflows;
            report.parameters += p.info.n_elements();
            if p.unpermute_heads.is_some() {
                report.unpermuted.push(p.hf_name.clone());
            }
            writer.write(&p.hf_name, &bytes)?;
            report.tensors_written += 1;
        }
        writer.finish()?;
        report.shards.push(shard.file_name.clone());
    }
    if shards.len() > 1 {
        write_json(
            &dir.join("model.safetensors.index.json"),
            &index_json(&shards),
        )?;
    }

    write_json(&dir.join("config.json"), &cfg.json)?;
    write_json(
        &dir.join("generation_config.json"),
        &generation_config(&g, &cfg)?,
    )?;
    write_json(&dir.join("tokenizer.json"), &tok.tokenizer_json)?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &tok.tokenizer_config_json,
    )?;

    for e in fs::read_dir(dir).map_err(io_err(dir, "listing partial output"))? {
        let e = e.map_err(io_err(dir, "listing partial output"))?;
        report.bytes_written += e.metadata().map_err(io_err(&e.path(), "stat"))?.len();
    }
    report.out_dir = staged.commit()?;
    Ok(report)
}

/// Cross-checks tensor shapes against the config, so a mismatch names the tensor.
fn check_shapes(g: &GgufFile, cfg: &ModelConfig, plan: &[Planned]) -> Result<(), ConvertError> {
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    for p in plan {
        let n = &p.hf_name;
        let expect: Option<Vec<usize>> = if n.ends_with("q_proj.weight") {
            Some(vec![cfg.num_heads * hd, h])
        } else if n.ends_with("k_proj.weight") || n.ends_with("v_proj.weight") {
            Some(vec![cfg.num_kv_heads * hd, h])
        } else if n.ends_with("o_proj.weight") {
            Some(vec![h, cfg.num_heads * hd])
        } else if (n.ends_with("layernorm.weight") && !n.contains("self_attn"))
            || n == "model.norm.weight"
        {
            Some(vec![h])
        } else if n.ends_with("query_layernorm.weight") || n.ends_with("key_layernorm.weight") {
            Some(vec![hd])
        } else {
            None
        };
        if let Some(e) = expect {
            if p.shape != e {
                return Err(ConvertError::Tensor {
                    path: g.path().to_path_buf(),
                    tensor: p.info.name.clone(),
                    detail: format!(
                        "shape {:?} does not match the config: expected {e:?}",
                        p.shape
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Dequantizes, un-permutes and casts one tensor; returns little-endian bytes and the number of
/// finite values that overflowed to infinity (f16 only).
fn convert_tensor(
    g: &GgufFile,
    p: &Planned,
    dtype: OutputDtype,
) -> Result<(Vec<u8>, u64), ConvertError> {
    let n = p.info.n_elements() as usize;
    let mut f = vec![0f32; n];
    dequantize(
        &p.info.name,
        p.info.ggml_type,
        g.tensor_data(p.info),
        &mut f,
    )
    .map_err(|source| ConvertError::Dequant {
        path: g.path().to_path_buf(),
        source,
    })?;
    if let Some(heads) = p.unpermute_heads {
        let rows = p.shape[0];
        let cols = n / rows.max(1);
        f = unpermute_rows(&f, rows, cols, heads).map_err(|detail| ConvertError::Tensor {
            path: g.path().to_path_buf(),
            tensor: p.info.name.clone(),
            detail,
        })?;
    }
    let mut out = vec![0u8; n * 2];
    let overflows: u64 = out
        .par_chunks_mut(2 * 65536)
        .zip(f.par_chunks(65536))
        .map(|(o, x)| {
            let mut over = 0u64;
            for (o, &v) in o.chunks_exact_mut(2).zip(x) {
                let bits = match dtype {
                    OutputDtype::Bf16 => bf16::from_f32(v).to_bits(),
                    OutputDtype::F16 => {
                        let h = f16::from_f32(v);
                        if h.is_infinite() && v.is_finite() {
                            over += 1;
                        }
                        h.to_bits()
                    }
                };
                o.copy_from_slice(&bits.to_le_bytes());
            }
            over
        })
        .sum();
    Ok((out, overflows))
}

fn write_json(path: &Path, v: &Value) -> Result<(), ConvertError> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| ConvertError::Io {
        path: path.to_path_buf(),
        action: "serializing JSON",
        source: e.into(),
    })?;
    s.push('\n');
    Ok(write_file(path, s.as_bytes())?)
}

fn generation_config(g: &GgufFile, cfg: &ModelConfig) -> Result<Value, ConvertError> {
    let mut m = serde_json::Map::new();
    if let Some(b) = cfg.bos_token_id {
        m.insert("bos_token_id".into(), json!(b));
    }
    // The end-of-turn token (`tokenizer.ggml.eot_token_id`) also ends generation in llama.cpp.
    let eot = g.opt_u64("tokenizer.ggml.eot_token_id")?;
    match (cfg.eos_token_id, eot) {
        (Some(e), Some(t)) if e != t => {
            m.insert("eos_token_id".into(), json!([e, t]));
        }
        (Some(e), _) | (None, Some(e)) => {
            m.insert("eos_token_id".into(), json!(e));
        }
        (None, None) => {}
    }
    if let Some(p) = cfg.pad_token_id {
        m.insert("pad_token_id".into(), json!(p));
    }
    Ok(Value::Object(m))
}
