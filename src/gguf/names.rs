//! llama.cpp tensor names -> Hugging Face names, and the Q/K row permutation llama.cpp applies
//! to llama-architecture models.
//!
//! Name facts: gguf-py `gguf/constants.py` (`TENSOR_NAMES`) and `gguf/tensor_mapping.py`
//! (`TensorNameMap`, the HF -> GGUF direction this module inverts), for the architectures
//! hy-quant handles: `llama`, `qwen2` and `hunyuan-dense`.
//!
//! Permutation facts: llama.cpp `convert_hf_to_gguf.py`, `LlamaModel.modify_tensors` calls
//! `LlamaModel.permute(w, n_head, n_head)` on `q_proj` and `permute(w, n_head, n_kv_head)` on
//! `k_proj` (weights and, in current versions, biases), where `permute` reshapes the rows to
//! `(heads, 2, head_dim/2, ...)`, swaps axes 1 and 2 and flattens back: within each head, HF's
//! rotate-half row order `[x_0..x_{d/2}, y_0..y_{d/2}]` becomes the interleaved
//! `[x_0, y_0, x_1, y_1, ...]` that ggml's normal (GPT-J style) RoPE expects. The inverse is the
//! same reshape read the other way: view rows as `(heads, head_dim/2, 2)` and swap the last two.
//! - `Qwen2Model` derives from `TextModel`, not `LlamaModel`: no permutation (qwen2 uses NeoX
//!   RoPE in llama.cpp, which already pairs `i` with `i + d/2`).
//! - `HunYuanModel` (registered for `HunYuanDenseV1ForCausalLM`, `MODEL_ARCH.HUNYUAN_DENSE`)
//!   also derives from `TextModel` and its `modify_tensors` only drops a tied `lm_head.weight`
//!   before calling `TextModel.modify_tensors`: no permutation. Consistently, llama.cpp
//!   `src/llama-model.cpp` `llama_model_rope_type` returns `LLAMA_ROPE_TYPE_NEOX` for
//!   `LLM_ARCH_HUNYUAN_DENSE` (as for qwen2), while `LLM_ARCH_LLAMA` gets `LLAMA_ROPE_TYPE_NORM`.

/// What to do with a GGUF tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub hf_name: String,
    /// Undo llama.cpp's RoPE row permutation with this many heads (rows = heads * head_dim).
    pub unpermute_heads: Option<usize>,
}

/// Architectures whose tensor names this module knows, as `general.architecture` spells them.
pub const SUPPORTED_ARCHS: &[&str] = &["llama", "qwen2", "hunyuan-dense"];

/// Maps a GGUF tensor name to its HF name. `Ok(None)` for tensors that have no HF counterpart
/// and are intentionally skipped (llama.cpp's precomputed `rope_freqs`); `Err` with the reason
/// for names this converter does not know (never dropped silently).
pub fn map_name(
    arch: &str,
    gguf_name: &str,
    n_head: usize,
    n_head_kv: usize,
) -> Result<Option<Mapped>, String> {
    let plain = |s: String| {
        Ok(Some(Mapped {
            hf_name: s,
            unpermute_heads: None,
        }))
    };
    match gguf_name {
        "token_embd.weight" => return plain("model.embed_tokens.weight".into()),
        "output_norm.weight" => return plain("model.norm.weight".into()),
        "output.weight" => return plain("lm_head.weight".into()),
        // llama 3.1-style frequency factors; they come from config.json's rope_scaling, which
        // GGUF keeps only in this derived form.
        "rope_freqs.weight" => return Ok(None),
        _ => {}
    }
    let unknown = || {
        format!(
            "tensor name '{gguf_name}' is not a known {arch} tensor (expected token_embd, output_norm, output or blk.N.<attn_norm|attn_q|attn_k|attn_v|attn_output|ffn_norm|ffn_gate|ffn_up|ffn_down{}>.weight|bias)",
            if arch == "hunyuan-dense" { "|attn_q_norm|attn_k_norm" } else { "" }
        )
    };
    let Some(rest) = gguf_name.strip_prefix("blk.") else {
        return Err(unknown());
    };
    let Some((layer, rest)) = rest.split_once('.') else {
        return Err(unknown());
    };
    let Ok(layer) = layer.parse::<usize>() else {
        return Err(unknown());
    };
    let Some((base, suffix)) = rest.rsplit_once('.') else {
        return Err(unknown());
    };
    if suffix != "weight" && suffix != "bias" {
        return Err(unknown());
    }
    let permute_llama = arch == "llama";
    let (hf, heads) = match base {
        "attn_norm" => ("input_layernorm", None),
        "ffn_norm" => ("post_attention_layernorm", None),
        "attn_q" => ("self_attn.q_proj", permute_llama.then_some(n_head)),
        "attn_k" => ("self_attn.k_proj", permute_llama.then_some(n_head_kv)),
        "attn_v" => ("self_attn.v_proj", None),
        "attn_output" => ("self_attn.o_proj", None),
        "ffn_gate" => ("mlp.gate_proj", None),
        "ffn_up" => ("mlp.up_proj", None),
        "ffn_down" => ("mlp.down_proj", None),
        "attn_q_norm" if arch == "hunyuan-dense" => ("self_attn.query_layernorm", None),
        "attn_k_norm" if arch == "hunyuan-dense" => ("self_attn.key_layernorm", None),
        _ => return Err(unknown()),
    };
    Ok(Some(Mapped {
        hf_name: format!("model.layers.{layer}.{hf}.{suffix}"),
        unpermute_heads: heads,
    }))
}

/// Undoes llama.cpp's `permute` on a row-major `[rows, cols]` matrix (or a `[rows]` bias with
/// `cols == 1`), `rows = heads * head_dim`: GGUF row `h*d + 2i + j` goes back to HF row
/// `h*d + j*(d/2) + i`.
pub fn unpermute_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    heads: usize,
) -> Result<Vec<f32>, String> {
    if heads == 0 || rows % heads != 0 || (rows / heads) % 2 != 0 || data.len() != rows * cols {
        return Err(format!(
            "cannot undo the RoPE permutation: {rows} rows x {cols} cols ({} values) do not split into {heads} heads of even size",
            data.len()
        ));
    }
    let d = rows / heads;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let src = h * d + 2 * i + j;
                let dst = h * d + j * (d / 2) + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let m = |a, n| map_name(a, n, 4, 2).unwrap().unwrap();
        assert_eq!(
            m("qwen2", "token_embd.weight").hf_name,
            "model.embed_tokens.weight"
        );
        assert_eq!(m("qwen2", "output.weight").hf_name, "lm_head.weight");
        assert_eq!(
            m("qwen2", "output_norm.weight").hf_name,
            "model.norm.weight"
        );
        assert_eq!(
            m("qwen2", "blk.3.attn_q.bias"),
            Mapped {
                hf_name: "model.layers.3.self_attn.q_proj.bias".into(),
                unpermute_heads: None
            }
        );
        assert_eq!(m("llama", "blk.0.attn_q.weight").unpermute_heads, Some(4));
        assert_eq!(m("llama", "blk.0.attn_k.weight").unpermute_heads, Some(2));
        assert_eq!(m("llama", "blk.0.attn_v.weight").unpermute_heads, None);
        assert_eq!(
            m("hunyuan-dense", "blk.0.attn_k.weight").unpermute_heads,
            None
        );
        assert_eq!(
            m("hunyuan-dense", "blk.12.attn_q_norm.weight").hf_name,
            "model.layers.12.self_attn.query_layernorm.weight"
        );
        assert_eq!(
            m("hunyuan-dense", "blk.12.attn_k_norm.weight").hf_name,
            "model.layers.12.self_attn.key_layernorm.weight"
        );
        assert_eq!(
            m("llama", "blk.1.ffn_norm.weight").hf_name,
            "model.layers.1.post_attention_layernorm.weight"
        );
        assert_eq!(
            m("llama", "blk.1.attn_norm.weight").hf_name,
            "model.layers.1.input_layernorm.weight"
        );
        assert_eq!(
            m("llama", "blk.1.attn_output.weight").hf_name,
            "model.layers.1.self_attn.o_proj.weight"
        );
        assert_eq!(
            m("llama", "blk.1.ffn_gate.weight").hf_name,
            "model.layers.1.mlp.gate_proj.weight"
        );
        assert_eq!(
            m("llama", "blk.1.ffn_up.weight").hf_name,
            "model.layers.1.mlp.up_proj.weight"
        );
        assert_eq!(
            m("llama", "blk.1.ffn_down.weight").hf_name,
            "model.layers.1.mlp.down_proj.weight"
        );
        assert!(map_name("llama", "rope_freqs.weight", 4, 2)
            .unwrap()
            .is_none());
        let e = map_name("qwen2", "blk.0.attn_q_norm.weight", 4, 2).unwrap_err();
        assert!(e.contains("blk.0.attn_q_norm.weight"));
        assert!(map_name("qwen2", "blk.x.attn_q.weight", 4, 2).is_err());
        assert!(map_name("qwen2", "something", 4, 2).is_err());
    }

    /// llama.cpp's forward permutation, written from its description, to check the inverse.
    fn permute(rows_hf: &[Vec<f32>], heads: usize) -> Vec<Vec<f32>> {
        let d = rows_hf.len() / heads;
        let mut out = vec![];
        for h in 0..heads {
            for i in 0..d / 2 {
                for j in 0..2 {
                    out.push(rows_hf[h * d + j * (d / 2) + i].clone());
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_permute() {
        let (heads, d, cols) = (3, 8, 5);
        let rows: Vec<Vec<f32>> = (0..heads * d)
            .map(|r| (0..cols).map(|c| (r * 100 + c) as f32).collect())
            .collect();
        let gguf: Vec<f32> = permute(&rows, heads).concat();
        // first head in GGUF order interleaves rows 0,4,1,5,2,6,3,7
        assert_eq!(gguf[cols], 400.0);
        let back = unpermute_rows(&gguf, heads * d, cols, heads).unwrap();
        assert_eq!(back, rows.concat());
        assert!(unpermute_rows(&gguf, heads * d, cols, 5).is_err());
    }
}
