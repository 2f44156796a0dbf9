//! One description of every supported decoder: which tensors a checkpoint holds, their shapes,
//! and which of them are the linear layers that get quantized.
//!
//! Facts: transformers `models/llama/modeling_llama.py`, `models/qwen2/modeling_qwen2.py`
//! (bias on q/k/v), `models/hunyuan_v1_dense/modular_hunyuan_v1_dense.py` (QK-norm weights
//! `query_layernorm` / `key_layernorm` over head_dim).

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;

/// The decoder families hy-quant understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchKind {
    HunyuanDense,
    Llama,
    Qwen2,
}

impl ArchKind {
    pub const SUPPORTED: &'static str =
        "hunyuan_v1_dense (HunYuanDenseV1ForCausalLM), llama (LlamaForCausalLM), qwen2 (Qwen2ForCausalLM)";

    pub fn from_model_type(model_type: &str) -> Option<Self> {
        Some(match model_type {
            "hunyuan_v1_dense" => ArchKind::HunyuanDense,
            "llama" => ArchKind::Llama,
            "qwen2" => ArchKind::Qwen2,
            _ => return None,
        })
    }

    pub fn model_type(self) -> &'static str {
        match self {
            ArchKind::HunyuanDense => "hunyuan_v1_dense",
            ArchKind::Llama => "llama",
            ArchKind::Qwen2 => "qwen2",
        }
    }
}

/// The seven projections of a decoder layer, in true-sequential order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinearKind {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LinearKind {
    pub const ALL: [LinearKind; 7] = [
        LinearKind::Q,
        LinearKind::K,
        LinearKind::V,
        LinearKind::O,
        LinearKind::Gate,
        LinearKind::Up,
        LinearKind::Down,
    ];

    pub fn module(self) -> &'static str {
        match self {
            LinearKind::Q => "self_attn.q_proj",
            LinearKind::K => "self_attn.k_proj",
            LinearKind::V => "self_attn.v_proj",
            LinearKind::O => "self_attn.o_proj",
            LinearKind::Gate => "mlp.gate_proj",
            LinearKind::Up => "mlp.up_proj",
            LinearKind::Down => "mlp.down_proj",
        }
    }

    /// Linears that read the same activations (and so share one Hessian in GPTQ).
    pub fn input_group(self) -> InputGroup {
        match self {
            LinearKind::Q | LinearKind::K | LinearKind::V => InputGroup::AttnIn,
            LinearKind::O => InputGroup::AttnOut,
            LinearKind::Gate | LinearKind::Up => InputGroup::MlpIn,
            LinearKind::Down => InputGroup::MlpOut,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputGroup {
    AttnIn,
    AttnOut,
    MlpIn,
    MlpOut,
}

/// One linear layer of one decoder layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearSpec {
    pub layer: usize,
    pub kind: LinearKind,
    /// Module path, e.g. `model.layers.3.self_attn.q_proj`; the weight is `{prefix}.weight`.
    pub prefix: String,
    pub in_features: usize,
    pub out_features: usize,
    pub has_bias: bool,
}

impl LinearSpec {
    pub fn weight_name(&self) -> String {
        format!("{}.weight", self.prefix)
    }
    pub fn bias_name(&self) -> String {
        format!("{}.bias", self.prefix)
    }
}

/// A tensor the checkpoint must hold, with its row-major (PyTorch) shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    fn new(name: impl Into<String>, shape: &[usize]) -> Self {
        TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }
}

/// A model architecture resolved from its config.
#[derive(Clone, Debug)]
pub struct Arch {
    pub kind: ArchKind,
    pub config: ModelConfig,
}

impl Arch {
    pub fn from_config(config: ModelConfig) -> Result<Self> {
        let kind = ArchKind::from_model_type(&config.model_type).ok_or_else(|| {
            Error::UnsupportedArch {
                path: config.path.clone(),
                found: config.model_type.clone(),
                supported: ArchKind::SUPPORTED.to_string(),
            }
        })?;
        Ok(Arch { kind, config })
    }

    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_config(ModelConfig::from_file(&dir.join("config.json"))?)
    }

    pub fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }

    pub fn layer_prefix(layer: usize) -> String {
        format!("model.layers.{layer}")
    }

    fn qkv_bias(&self) -> bool {
        self.kind == ArchKind::Qwen2 || self.config.attention_bias
    }

    /// The quantizable linears of `layer`, in true-sequential order (q, k, v, o, gate, up, down).
    pub fn layer_linears(&self, layer: usize) -> Vec<LinearSpec> {
        let c = &self.config;
        let q_out = c.num_attention_heads * c.head_dim;
        let kv_out = c.num_key_value_heads * c.head_dim;
        LinearKind::ALL
            .iter()
            .map(|&kind| {
                let (in_features, out_features) = match kind {
                    LinearKind::Q => (c.hidden_size, q_out),
                    LinearKind::K | LinearKind::V => (c.hidden_size, kv_out),
                    LinearKind::O => (q_out, c.hidden_size),
                    LinearKind::Gate | LinearKind::Up => (c.hidden_size, c.intermediate_size),
                    LinearKind::Down => (c.intermediate_size, c.hidden_size),
                };
                let has_bias = match kind {
                    LinearKind::Q | LinearKind::K | LinearKind::V => self.qkv_bias(),
                    LinearKind::O => c.attention_bias,
                    LinearKind::Gate | LinearKind::Up | LinearKind::Down => c.mlp_bias,
                };
                LinearSpec {
                    layer,
                    kind,
                    prefix: format!("{}.{}", Self::layer_prefix(layer), kind.module()),
                    in_features,
                    out_features,
                    has_bias,
                }
            })
            .collect()
    }

    /// Every tensor of `layer` that is not a quantizable weight: norms and biases.
    pub fn layer_other_tensors(&self, layer: usize) -> Vec<TensorSpec> {
        let c = &self.config;
        let p = Self::layer_prefix(layer);
        let mut out = vec![
            TensorSpec::new(format!("{p}.input_layernorm.weight"), &[c.hidden_size]),
            TensorSpec::new(
                format!("{p}.post_attention_layernorm.weight"),
                &[c.hidden_size],
            ),
        ];
        if self.kind == ArchKind::HunyuanDense && c.use_qk_norm {
            out.push(TensorSpec::new(
                format!("{p}.self_attn.query_layernorm.weight"),
                &[c.head_dim],
            ));
            out.push(TensorSpec::new(
                format!("{p}.self_attn.key_layernorm.weight"),
                &[c.head_dim],
            ));
        }
        for lin in self.layer_linears(layer) {
            if lin.has_bias {
                out.push(TensorSpec::new(lin.bias_name(), &[lin.out_features]));
            }
        }
        out
    }

    pub fn embed_tokens(&self) -> TensorSpec {
        TensorSpec::new(
            "model.embed_tokens.weight",
            &[self.config.vocab_size, self.config.hidden_size],
        )
    }

    pub fn final_norm(&self) -> TensorSpec {
        TensorSpec::new("model.norm.weight", &[self.config.hidden_size])
    }

    pub fn lm_head(&self) -> TensorSpec {
        TensorSpec::new(
            "lm_head.weight",
            &[self.config.vocab_size, self.config.hidden_size],
        )
    }

    /// Every tensor a full-precision checkpoint of this architecture holds. `lm_head` is listed
    /// only when embeddings are not tied (a tied checkpoint may still store it: callers accept
    /// that extra tensor).
    pub fn expected_tensors(&self) -> Vec<TensorSpec> {
        let mut out = vec![self.embed_tokens()];
        for layer in 0..self.num_layers() {
            for lin in self.layer_linears(layer) {
                out.push(TensorSpec::new(
                    lin.weight_name(),
                    &[lin.out_features, lin.in_features],
                ));
            }
            out.extend(self.layer_other_tensors(layer));
        }
        out.push(self.final_norm());
        if !self.config.tie_word_embeddings {
            out.push(self.lm_head());
        }
        out
    }

    /// Effective RoPE base. HunYuan's dynamic-alpha scaling multiplies theta by
    /// alpha^(d/(d-2)) at every position (transformers `HunYuanDenseV1RotaryEmbedding`).
    pub fn rope_base(&self) -> f64 {
        let c = &self.config;
        let alpha = c
            .rope_scaling
            .as_ref()
            .filter(|s| {
                s.get("type")
                    .or_else(|| s.get("rope_type"))
                    .and_then(|t| t.as_str())
                    == Some("dynamic")
            })
            .and_then(|s| s.get("alpha"))
            .and_then(|a| a.as_f64());
        match (self.kind, alpha) {
            (ArchKind::HunyuanDense, Some(alpha)) => {
                let d = c.head_dim as f64;
                c.rope_theta * alpha.powf(d / (d - 2.0))
            }
            _ => c.rope_theta,
        }
    }
}
