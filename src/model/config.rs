//! `config.json`: the fields hy-quant needs, parsed strictly, plus the raw JSON so an output
//! checkpoint can carry every key the input had.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::dtype::DType;
use crate::error::{Error, IoContext, Result};

/// The subset of a Hugging Face `config.json` that decides tensor names, shapes and numerics.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub path: PathBuf,
    pub model_type: String,
    pub architectures: Vec<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// `rope_scaling` as written (HunYuan: `{"type":"dynamic","alpha":1000.0}`).
    pub rope_scaling: Option<Value>,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub use_qk_norm: bool,
    /// `torch_dtype` (or transformers 5's `dtype`), if present.
    pub dtype: Option<DType>,
    /// The whole file, keys in their original order.
    pub raw: Map<String, Value>,
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::Missing {
                path: path.to_path_buf(),
                what: "every checkpoint needs a config.json".into(),
            });
        }
        let text = std::fs::read_to_string(path).at(path)?;
        let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(path, value)
    }

    pub fn from_json(path: &Path, value: Value) -> Result<Self> {
        let Value::Object(raw) = value else {
            return Err(Error::config(path, "top level is not a JSON object"));
        };
        let get = |k: &str| raw.get(k).filter(|v| !v.is_null());
        let usize_field = |k: &str| -> Result<usize> {
            let v = get(k).ok_or_else(|| Error::config(path, format!("missing field `{k}`")))?;
            v.as_u64()
                .filter(|n| *n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| {
                    Error::config(path, format!("`{k}` must be a positive integer, found {v}"))
                })
        };
        let opt_usize = |k: &str| -> Result<Option<usize>> {
            match get(k) {
                None => Ok(None),
                Some(_) => usize_field(k).map(Some),
            }
        };
        let f64_field = |k: &str, default: f64| -> Result<f64> {
            match get(k) {
                None => Ok(default),
                Some(v) => v.as_f64().ok_or_else(|| {
                    Error::config(path, format!("`{k}` must be a number, found {v}"))
                }),
            }
        };
        let bool_field = |k: &str, default: bool| -> Result<bool> {
            match get(k) {
                None => Ok(default),
                Some(v) => v.as_bool().ok_or_else(|| {
                    Error::config(path, format!("`{k}` must be true/false, found {v}"))
                }),
            }
        };

        let model_type = get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::config(path, "missing string field `model_type`"))?
            .to_string();
        let architectures = get("architectures")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let hidden_size = usize_field("hidden_size")?;
        let num_attention_heads = usize_field("num_attention_heads")?;
        let num_key_value_heads = opt_usize("num_key_value_heads")?.unwrap_or(num_attention_heads);
        let head_dim = match opt_usize("head_dim")? {
            Some(d) => d,
            None => match opt_usize("attention_head_dim")? {
                Some(d) => d,
                None => hidden_size / num_attention_heads,
            },
        };
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(Error::config(
                path,
                format!(
                    "num_attention_heads ({num_attention_heads}) is not a multiple of \
                     num_key_value_heads ({num_key_value_heads})"
                ),
            ));
        }
        let is_hunyuan = model_type == "hunyuan_v1_dense";
        let dtype_name = get("torch_dtype")
            .or_else(|| get("dtype"))
            .and_then(Value::as_str);
        let dtype = match dtype_name {
            None => None,
            Some(name) => Some(DType::from_torch_name(name).ok_or_else(|| {
                Error::config(
                    path,
                    format!("unsupported dtype {name:?}; expected bfloat16, float16 or float32"),
                )
            })?),
        };
        Ok(ModelConfig {
            path: path.to_path_buf(),
            architectures,
            hidden_size,
            intermediate_size: usize_field("intermediate_size")?,
            num_hidden_layers: usize_field("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: usize_field("vocab_size")?,
            rms_norm_eps: f64_field("rms_norm_eps", 1e-6)?,
            rope_theta: f64_field("rope_theta", 10000.0)?,
            rope_scaling: get("rope_scaling").cloned(),
            tie_word_embeddings: bool_field("tie_word_embeddings", is_hunyuan)?,
            attention_bias: bool_field("attention_bias", false)?,
            mlp_bias: bool_field("mlp_bias", false)?,
            use_qk_norm: bool_field("use_qk_norm", is_hunyuan)?,
            dtype,
            model_type,
            raw,
        })
    }
}
