//! `hy-quant inspect DIR`: what a checkpoint is, without reading its weights.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::error::{IoContext, Result};
use crate::model::Checkpoint;

#[derive(Debug, Serialize)]
pub struct InspectReport {
    pub dir: String,
    pub model_type: String,
    pub architectures: Vec<String>,
    pub layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    pub rope_base: f64,
    pub dtype: String,
    pub tensors: usize,
    pub shards: usize,
    pub bytes_on_disk: u64,
    /// `quantization_config` from config.json, if any.
    pub quantization: Option<Value>,
    /// Method and tool version from manifest.json, if hy-quant wrote the directory.
    pub produced_by: Option<String>,
}

pub fn inspect(dir: &Path) -> Result<InspectReport> {
    let ckpt = Checkpoint::open(dir)?;
    let c = &ckpt.config;
    let mut bytes_on_disk = 0;
    for entry in std::fs::read_dir(dir).at(dir)? {
        let meta = entry.at(dir)?.metadata().at(dir)?;
        if meta.is_file() {
            bytes_on_disk += meta.len();
        }
    }
    let produced_by = crate::manifest::Manifest::read(dir).ok().map(|m| {
        format!(
            "{} {} ({} int{} g{})",
            m.tool, m.version, m.method, m.bits, m.group_size
        )
    });
    Ok(InspectReport {
        dir: dir.display().to_string(),
        model_type: c.model_type.clone(),
        architectures: c.architectures.clone(),
        layers: c.num_hidden_layers,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        vocab_size: c.vocab_size,
        tie_word_embeddings: c.tie_word_embeddings,
        rope_base: ckpt.arch.rope_base(),
        dtype: ckpt
            .model_dtype()
            .map(|d| d.to_string())
            .unwrap_or_else(|_| "unknown".into()),
        tensors: ckpt.tensor_names().count(),
        shards: ckpt.shard_paths().len(),
        bytes_on_disk,
        quantization: c.raw.get("quantization_config").cloned(),
        produced_by,
    })
}

impl std::fmt::Display for InspectReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.dir)?;
        writeln!(
            f,
            "  architecture  {} ({})",
            self.model_type,
            self.architectures.join(", ")
        )?;
        writeln!(
            f,
            "  shape         {} layers, hidden {}, intermediate {}, heads {}/{} kv, head_dim {}, vocab {}",
            self.layers, self.hidden_size, self.intermediate_size, self.heads, self.kv_heads, self.head_dim, self.vocab_size
        )?;
        writeln!(f, "  tied embed    {}", self.tie_word_embeddings)?;
        writeln!(f, "  rope base     {:.6e}", self.rope_base)?;
        writeln!(f, "  dtype         {}", self.dtype)?;
        writeln!(
            f,
            "  on disk       {:.2} GB in {} shard(s), {} tensors",
            self.bytes_on_disk as f64 / 1e9,
            self.shards,
            self.tensors
        )?;
        match &self.quantization {
            None => writeln!(f, "  quantization  none")?,
            Some(q) => {
                let get = |k: &str| {
                    q.get(k)
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "-".into())
                };
                writeln!(
                    f,
                    "  quantization  {} bits={} group_size={} sym={} desc_act={} format={}",
                    get("quant_method"),
                    get("bits"),
                    get("group_size"),
                    get("sym"),
                    get("desc_act"),
                    get("checkpoint_format")
                )?;
            }
        }
        if let Some(p) = &self.produced_by {
            writeln!(f, "  produced by   {p}")?;
        }
        Ok(())
    }
}
