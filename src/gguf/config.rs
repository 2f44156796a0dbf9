//! GGUF metadata -> Hugging Face `config.json`.
//!
//! Key names: ggml `docs/gguf.md` ("LLM" section) and gguf-py `gguf/constants.py` (`Keys.LLM`,
//! `Keys.Attention`, `Keys.Rope`); they are written by llama.cpp `convert_hf_to_gguf.py`
//! (`TextModel.set_gguf_parameters`). The HF field sets follow the real configs of
//! Qwen2.5-Coder-*-Instruct (`Qwen2ForCausalLM`), Llama (`LlamaForCausalLM`) and HY-MT1.5
//! (`HunYuanDenseV1ForCausalLM`, transformers `models/hunyuan_v1_dense/configuration_*.py`).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::dequant::dequantize;
use super::reader::{GgufError, GgufFile};

/// Architectures this converter supports, as `general.architecture` spells them.
pub const SUPPORTED_ARCHS: &[&str] = super::names::SUPPORTED_ARCHS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    HunyuanDense,
}

impl Arch {
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::HunyuanDense => "hunyuan-dense",
        }
    }
    pub fn from_gguf(g: &GgufFile) -> Result<Self, GgufError> {
        let arch = g.get_str("general.architecture")?;
        match arch {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            "hunyuan-dense" => Ok(Arch::HunyuanDense),
            other => Err(GgufError::UnsupportedArchitecture {
                path: g.path().to_path_buf(),
                arch: other.into(),
                supported: SUPPORTED_ARCHS.to_vec(),
            }),
        }
    }
}

/// The hyper-parameters the converter itself needs, plus the finished config.json.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    pub context_length: usize,
    pub bos_token_id: Option<u64>,
    pub eos_token_id: Option<u64>,
    pub pad_token_id: Option<u64>,
    pub json: Value,
}

/// HunYuan's NTK-alpha RoPE as llama.cpp folds it into `rope.freq_base`
/// (`HunYuanModel.set_gguf_parameters`: `base * alpha ** (dim / (dim - 2))`).
const HUNYUAN_BASE: f64 = 10000.0;
const HUNYUAN_ALPHA: f64 = 1000.0;

fn invalid(g: &GgufFile, what: &str, detail: String) -> GgufError {
    GgufError::Invalid {
        path: g.path().to_path_buf(),
        what: what.into(),
        detail,
    }
}

fn to_usize(g: &GgufFile, key: &str, v: u64) -> Result<usize, GgufError> {
    usize::try_from(v)
        .ok()
        .filter(|&v| v > 0 && v < 1 << 40)
        .ok_or_else(|| {
            invalid(
                g,
                &format!("metadata key '{key}'"),
                format!("{v} is out of range"),
            )
        })
}

/// Builds config.json for `dtype_name` ("bfloat16" or "float16").
pub fn build_config(g: &GgufFile, dtype_name: &str) -> Result<ModelConfig, GgufError> {
    let arch = Arch::from_gguf(g)?;
    let a = arch.gguf_name();
    let k = |s: &str| format!("{a}.{s}");
    let req = |key: String| -> Result<usize, GgufError> {
        let v = g.get_u64(&key)?;
        to_usize(g, &key, v)
    };
    let hidden_size = req(k("embedding_length"))?;
    let num_layers = req(k("block_count"))?;
    let intermediate = req(k("feed_forward_length"))?;
    let num_heads = req(k("attention.head_count"))?;
    let num_kv_heads = match g.opt_u64(&k("attention.head_count_kv"))? {
        Some(v) => to_usize(g, &k("attention.head_count_kv"), v)?,
        None => num_heads,
    };
    if num_heads % num_kv_heads != 0 {
        return Err(invalid(
            g,
            "attention heads",
            format!("head_count {num_heads} is not a multiple of head_count_kv {num_kv_heads}"),
        ));
    }
    let head_dim = match g.opt_u64(&k("attention.key_length"))? {
        Some(v) => to_usize(g, &k("attention.key_length"), v)?,
        None => {
            if hidden_size % num_heads != 0 {
                return Err(invalid(
                    g,
                    "attention heads",
                    format!("embedding_length {hidden_size} is not a multiple of head_count {num_heads} and attention.key_length is absent"),
                ));
            }
            hidden_size / num_heads
        }
    };
    let rms_eps = g.get_f64(&k("attention.layer_norm_rms_epsilon"))?;
    let freq_base = g.opt_f64(&k("rope.freq_base"))?.unwrap_or(10000.0);
    let context_length = req(k("context_length"))?;

    let embd = g
        .tensor("token_embd.weight")
        .ok_or_else(|| invalid(g, "tensors", "tensor 'token_embd.weight' is missing".into()))?;
    let embd_rows = *embd.dims.last().unwrap_or(&0) as usize;
    let vocab_size = match g.opt_str_array("tokenizer.ggml.tokens")? {
        Some(t) => t.len(),
        None => embd_rows,
    };
    if vocab_size != embd_rows || embd.dims.first() != Some(&(hidden_size as u64)) {
        return Err(invalid(
            g,
            "tensor 'token_embd.weight'",
            format!(
                "shape (ggml order) {:?} does not match embedding_length {hidden_size} x vocabulary size {vocab_size} (tokenizer.ggml.tokens)",
                embd.dims
            ),
        ));
    }
    let tie = g.tensor("output.weight").is_none();
    let has = |n: &str| g.tensor(n).is_some();
    let attention_bias = has("blk.0.attn_q.bias");
    let mlp_bias = has("blk.0.ffn_gate.bias") || has("blk.0.ffn_down.bias");
    let qk_norm = has("blk.0.attn_q_norm.weight");

    let bos = g.opt_u64("tokenizer.ggml.bos_token_id")?;
    let eos = g.opt_u64("tokenizer.ggml.eos_token_id")?;
    let pad = g.opt_u64("tokenizer.ggml.padding_token_id")?;
    for (name, id) in [("bos", bos), ("eos", eos), ("padding", pad)] {
        if let Some(id) = id {
            if id as usize >= vocab_size {
                return Err(invalid(
                    g,
                    &format!("metadata key 'tokenizer.ggml.{name}_token_id'"),
                    format!("{id} is not below the vocabulary size {vocab_size}"),
                ));
            }
        }
    }

    let mut rope_theta = freq_base;
    let mut rope_scaling = rope_scaling_from_gguf(g, a, head_dim, freq_base)?;
    if arch == Arch::HunyuanDense && rope_scaling.is_null() {
        let folded = HUNYUAN_BASE * HUNYUAN_ALPHA.powf(head_dim as f64 / (head_dim as f64 - 2.0));
        // freq_base is stored as f32: compare with f32 precision.
        if ((freq_base - folded) / folded).abs() < 1e-6 {
            rope_theta = HUNYUAN_BASE;
            rope_scaling = json!({
                "alpha": HUNYUAN_ALPHA, "beta_fast": 32, "beta_slow": 1, "factor": 1.0,
                "mscale": 1.0, "mscale_all_dim": 1.0, "type": "dynamic"
            });
        }
    }

    let mut c: BTreeMap<&str, Value> = BTreeMap::new();
    c.insert("attention_dropout", json!(0.0));
    c.insert("bos_token_id", json!(bos));
    c.insert("eos_token_id", json!(eos));
    c.insert("hidden_act", json!("silu"));
    c.insert("hidden_size", json!(hidden_size));
    c.insert("initializer_range", json!(0.02));
    c.insert("intermediate_size", json!(intermediate));
    c.insert("max_position_embeddings", json!(context_length));
    c.insert("num_attention_heads", json!(num_heads));
    c.insert("num_hidden_layers", json!(num_layers));
    c.insert("num_key_value_heads", json!(num_kv_heads));
    c.insert("rms_norm_eps", json!(rms_eps));
    c.insert("rope_scaling", rope_scaling);
    c.insert("rope_theta", json!(rope_theta));
    c.insert("tie_word_embeddings", json!(tie));
    c.insert("torch_dtype", json!(dtype_name));
    c.insert("dtype", json!(dtype_name));
    c.insert("use_cache", json!(true));
    c.insert("vocab_size", json!(vocab_size));
    match arch {
        Arch::Qwen2 => {
            if !attention_bias {
                return Err(invalid(
                    g,
                    "tensors",
                    "qwen2 requires q/k/v biases but 'blk.0.attn_q.bias' is missing".into(),
                ));
            }
            if head_dim * num_heads != hidden_size {
                return Err(invalid(
                    g,
                    "attention heads",
                    format!("qwen2 needs head_dim * heads == hidden ({head_dim} * {num_heads} != {hidden_size})"),
                ));
            }
            c.insert("architectures", json!(["Qwen2ForCausalLM"]));
            c.insert("model_type", json!("qwen2"));
            c.insert("max_window_layers", json!(num_layers));
            c.insert("sliding_window", json!(context_length));
            c.insert("use_sliding_window", json!(false));
        }
        Arch::Llama => {
            c.insert("architectures", json!(["LlamaForCausalLM"]));
            c.insert("model_type", json!("llama"));
            c.insert("attention_bias", json!(attention_bias));
            c.insert("mlp_bias", json!(mlp_bias));
            c.insert("head_dim", json!(head_dim));
            c.insert("pretraining_tp", json!(1));
        }
        Arch::HunyuanDense => {
            c.insert("architectures", json!(["HunYuanDenseV1ForCausalLM"]));
            c.insert("model_type", json!("hunyuan_v1_dense"));
            c.insert("attention_bias", json!(attention_bias));
            c.insert("mlp_bias", json!(mlp_bias));
            c.insert("head_dim", json!(head_dim));
            c.insert("attention_head_dim", json!(head_dim));
            c.insert("use_qk_norm", json!(qk_norm));
            c.insert("pad_token_id", json!(pad));
            c.insert("pretraining_tp", json!(1));
        }
    }
    let json = Value::Object(c.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
    Ok(ModelConfig {
        arch,
        hidden_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        vocab_size,
        tie_word_embeddings: tie,
        context_length,
        bos_token_id: bos,
        eos_token_id: eos,
        pad_token_id: pad,
        json,
    })
}

/// `rope_scaling` from `{arch}.rope.scaling.*` keys or llama.cpp's `rope_freqs` tensor.
fn rope_scaling_from_gguf(
    g: &GgufFile,
    a: &str,
    head_dim: usize,
    freq_base: f64,
) -> Result<Value, GgufError> {
    let ty = g.opt_str(&format!("{a}.rope.scaling.type"))?;
    let factor = g.opt_f64(&format!("{a}.rope.scaling.factor"))?;
    let scaling = match (ty, factor) {
        (None | Some("none"), _) => Value::Null,
        (Some("linear"), Some(f)) if f != 1.0 => json!({"type": "linear", "factor": f}),
        (Some("linear"), _) => Value::Null,
        (Some(other), _) => {
            return Err(invalid(
                g,
                &format!("metadata key '{a}.rope.scaling.type'"),
                format!("RoPE scaling '{other}' is not supported by the converter (supported: none, linear, llama3 via rope_freqs)"),
            ))
        }
    };
    let Some(t) = g.tensor("rope_freqs.weight") else {
        return Ok(scaling);
    };
    if !scaling.is_null() {
        return Err(invalid(
            g,
            "tensor 'rope_freqs.weight'",
            "present together with rope.scaling.type; cannot express both in config.json".into(),
        ));
    }
    let n = t.n_elements() as usize;
    if n != head_dim / 2 {
        return Err(invalid(
            g,
            "tensor 'rope_freqs.weight'",
            format!("has {n} values, expected head_dim/2 = {}", head_dim / 2),
        ));
    }
    let mut got = vec![0f32; n];
    dequantize(&t.name, t.ggml_type, g.tensor_data(t), &mut got)
        .map_err(|e| invalid(g, "tensor 'rope_freqs.weight'", e.to_string()))?;
    // llama.cpp `LlamaModel.generate_extra_tensors` writes, per frequency, 1 (short
    // wavelengths), `factor` (long ones) or 1/((1-s)/factor + s) in between, for Llama 3.1's
    // rope_scaling {rope_type: llama3, low_freq_factor, high_freq_factor,
    // original_max_position_embeddings}. Recover the standard parameter set and check that it
    // reproduces every value; anything else is refused rather than silently dropped.
    let factor = got.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let (low, high, orig) = (1.0f64, 4.0f64, 8192.0f64);
    {
        let (low_wl, high_wl) = (orig / low, orig / high);
        let ok = got.iter().enumerate().all(|(i, &v)| {
            let freq = 1.0 / freq_base.powf((2 * i) as f64 / head_dim as f64);
            let wl = 2.0 * std::f64::consts::PI / freq;
            let want = if wl < high_wl {
                1.0
            } else if wl > low_wl {
                factor
            } else {
                let s = (orig / wl - low) / (high - low);
                1.0 / ((1.0 - s) / factor + s)
            };
            ((v as f64 - want) / want).abs() < 1e-4
        });
        if ok {
            return Ok(json!({
                "factor": factor, "high_freq_factor": high, "low_freq_factor": low,
                "original_max_position_embeddings": orig as u64, "rope_type": "llama3"
            }));
        }
    }
    Err(invalid(
        g,
        "tensor 'rope_freqs.weight'",
        "the RoPE frequency factors do not match Llama 3 scaling with low_freq_factor 1, high_freq_factor 4, original context 8192; cannot reconstruct rope_scaling".into(),
    ))
}
