//! Decoder forward pass for `qwen2`, `llama` and `hunyuan_v1_dense`, f32 activations, with a
//! per-sequence KV cache. Several sequences (each prefilling or decoding) go through one call:
//! their new tokens are stacked so every linear layer runs once per step.
//!
//! Order of operations (transformers `models/qwen2/modeling_qwen2.py`,
//! `models/llama/modeling_llama.py`, `models/hunyuan_v1_dense/modeling_hunyuan_v1_dense.py`):
//!   h = embed(ids)
//!   per layer: a = rmsnorm(h); q,k,v = proj(a) (+bias for qwen2); q,k = rope(q,k) (NeoX
//!     rotate-half); HunYuan only: q,k = rmsnorm_head_dim(q,k) AFTER rope; attention with
//!     GQA (query head h reads kv head h / (heads/kv_heads)), causal, scale 1/sqrt(head_dim);
//!     h += o_proj(attn); h += down(silu(gate(rmsnorm(h))) * up(rmsnorm(h)))
//!   logits = lm_head(rmsnorm(h)) (lm_head = embed_tokens when tied and not stored)

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::arch::{ArchKind, LinearKind};
use crate::model::{Arch, Checkpoint};
use crate::quant::QuantScheme;
use crate::runner::weights::{dot, Linear};

/// `x * w / sqrt(mean(x^2) + eps)` over each row of length `w.len()`, in place.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for row in x.chunks_mut(d) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for (v, g) in row.iter_mut().zip(w) {
            *v = *v * inv * g;
        }
    }
}

/// Rotary embedding tables, NeoX / "rotate half" layout: dimension i pairs with i + d/2.
#[derive(Clone, Debug)]
pub struct Rope {
    pub head_dim: usize,
    /// [head_dim / 2], 1 / base^(2i / head_dim), rounded to f32 as transformers stores it.
    pub inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(base: f64, head_dim: usize) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| (1.0 / base.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        Rope { head_dim, inv_freq }
    }

    /// Rotates every head (`x` is [heads * head_dim]) of one token at `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let half = self.head_dim / 2;
        // The angle is an f32 product, as transformers computes it (inv_freq @ positions in f32).
        let (cos, sin): (Vec<f32>, Vec<f32>) = self
            .inv_freq
            .iter()
            .map(|f| {
                let a = (pos as f32 * f) as f64;
                (a.cos() as f32, a.sin() as f32)
            })
            .unzip();
        for head in x.chunks_mut(self.head_dim) {
            for i in 0..half {
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * cos[i] - b * sin[i];
                head[i + half] = b * cos[i] + a * sin[i];
            }
        }
    }
}

/// Keys and values of one sequence, per layer [len, kv_heads * head_dim].
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            k: vec![Vec::new(); num_layers],
            v: vec![Vec::new(); num_layers],
            len: 0,
        }
    }

    /// Tokens already processed (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.k
            .iter_mut()
            .chain(self.v.iter_mut())
            .for_each(Vec::clear);
        self.len = 0;
    }
}

/// One sequence's part of a batched step: its new tokens and its cache.
pub struct SeqStep<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
}

struct Layer {
    input_norm: Vec<f32>,
    post_norm: Vec<f32>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Model dimensions the forward pass needs.
#[derive(Clone, Debug)]
pub struct Dims {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub eps: f32,
}

impl Dims {
    /// The dimensions `arch`'s config.json gives; an odd head_dim is an error (RoPE rotates
    /// pairs).
    pub fn of(arch: &Arch) -> Result<Self> {
        let c = &arch.config;
        let dims = Dims {
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            vocab: c.vocab_size,
            eps: c.rms_norm_eps as f32,
        };
        if dims.head_dim % 2 != 0 {
            return Err(Error::config(
                &c.path,
                format!("head_dim {} is odd; RoPE needs pairs", dims.head_dim),
            ));
        }
        Ok(dims)
    }
}

/// A loaded decoder.
pub struct Model {
    pub kind: ArchKind,
    pub dims: Dims,
    pub rope: Rope,
    /// Set when the linears are GPTQ-packed.
    pub quant: Option<QuantScheme>,
    embed: Linear,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    /// `None` = tied to `embed`.
    lm_head: Option<Linear>,
}

/// Reads `quantization_config` (GPTQ only) from config.json.
pub fn quant_scheme(arch: &Arch) -> Result<Option<QuantScheme>> {
    let Some(q) = arch.config.raw.get("quantization_config") else {
        return Ok(None);
    };
    let path = &arch.config.path;
    let method = q.get("quant_method").and_then(|m| m.as_str()).unwrap_or("");
    if method != "gptq" {
        return Err(Error::config(
            path,
            format!("quantization_config.quant_method is {method:?}; the runner reads only \"gptq\" (v1)"),
        ));
    }
    if let Some(fmt) = q.get("checkpoint_format").and_then(|f| f.as_str()) {
        if fmt != "gptq" {
            return Err(Error::config(
                path,
                format!("quantization_config.checkpoint_format is {fmt:?}; expected \"gptq\" (v1)"),
            ));
        }
    }
    let bits = q.get("bits").and_then(|b| b.as_u64()).ok_or_else(|| {
        Error::config(
            path,
            "quantization_config.bits is missing or not an integer",
        )
    })?;
    let gs = q
        .get("group_size")
        .and_then(|g| g.as_i64())
        .ok_or_else(|| {
            Error::config(
                path,
                "quantization_config.group_size is missing or not an integer",
            )
        })?;
    let sym = q.get("sym").and_then(|s| s.as_bool()).unwrap_or(true);
    QuantScheme::new(bits as u8, gs, sym)
        .map(Some)
        .map_err(|e| Error::config(path, format!("quantization_config: {e}")))
}

fn norm_weight(ckpt: &Checkpoint, name: &str, len: usize) -> Result<Vec<f32>> {
    let view = ckpt.tensor(name)?;
    if view.info.shape != [len] {
        return Err(Error::tensor(
            name,
            format!("has shape {:?}, expected [{len}]", view.info.shape),
        ));
    }
    view.to_f32_finite()
}

impl Model {
    /// Loads every weight of `ckpt` (full precision or GPTQ v1) in stored form.
    pub fn load(ckpt: &Checkpoint) -> Result<Self> {
        let arch = &ckpt.arch;
        let c = &arch.config;
        let quant = quant_scheme(arch)?;
        let dims = Dims::of(arch)?;
        let embed_spec = arch.embed_tokens();
        let embed = Linear::load(
            ckpt,
            "model.embed_tokens",
            dims.vocab,
            dims.hidden,
            false,
            None,
        )
        .map_err(|e| match e {
            Error::Tensor { msg, .. } => Error::tensor(&embed_spec.name, msg),
            e => e,
        })?;
        let mut layers = Vec::with_capacity(arch.num_layers());
        for l in 0..arch.num_layers() {
            let p = Arch::layer_prefix(l);
            let lin = |kind: LinearKind| -> Result<Linear> {
                let spec = arch
                    .layer_linears(l)
                    .into_iter()
                    .find(|s| s.kind == kind)
                    .expect("every kind is listed");
                Linear::load(
                    ckpt,
                    &spec.prefix,
                    spec.out_features,
                    spec.in_features,
                    spec.has_bias,
                    quant.as_ref(),
                )
            };
            let qk_norm = arch.kind == ArchKind::HunyuanDense && c.use_qk_norm;
            layers.push(Layer {
                input_norm: norm_weight(ckpt, &format!("{p}.input_layernorm.weight"), dims.hidden)?,
                post_norm: norm_weight(
                    ckpt,
                    &format!("{p}.post_attention_layernorm.weight"),
                    dims.hidden,
                )?,
                q_norm: if qk_norm {
                    Some(norm_weight(
                        ckpt,
                        &format!("{p}.self_attn.query_layernorm.weight"),
                        dims.head_dim,
                    )?)
                } else {
                    None
                },
                k_norm: if qk_norm {
                    Some(norm_weight(
                        ckpt,
                        &format!("{p}.self_attn.key_layernorm.weight"),
                        dims.head_dim,
                    )?)
                } else {
                    None
                },
                q: lin(LinearKind::Q)?,
                k: lin(LinearKind::K)?,
                v: lin(LinearKind::V)?,
                o: lin(LinearKind::O)?,
                gate: lin(LinearKind::Gate)?,
                up: lin(LinearKind::Up)?,
                down: lin(LinearKind::Down)?,
            });
        }
        let final_norm = norm_weight(ckpt, &arch.final_norm().name, dims.hidden)?;
        // A stored lm_head wins even when tied (Hunyuan-MT-7B may store a copy).
        let lm_head = if ckpt.contains("lm_head.weight") || ckpt.contains("lm_head.qweight") {
            Some(Linear::load(
                ckpt,
                "lm_head",
                dims.vocab,
                dims.hidden,
                false,
                quant.as_ref(),
            )?)
        } else if c.tie_word_embeddings {
            None
        } else {
            return Err(Error::tensor(
                "lm_head.weight",
                format!(
                    "missing from {} and tie_word_embeddings is false",
                    ckpt.dir.display()
                ),
            ));
        };
        Ok(Model {
            kind: arch.kind,
            rope: Rope::new(arch.rope_base(), dims.head_dim),
            dims,
            quant,
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Bytes of weights held in memory.
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                    .iter()
                    .map(|x| x.weight_bytes())
                    .sum::<usize>()
            })
            .sum();
        layers + self.embed.weight_bytes() + self.lm_head.as_ref().map_or(0, Linear::weight_bytes)
    }

    /// Runs the new tokens of every sequence through the model, appending to their caches, and
    /// returns the logits of each sequence's last new token ([vocab] each). A sequence with no
    /// new tokens gets an empty vector.
    pub fn forward(&self, steps: &mut [SeqStep<'_>]) -> Result<Vec<Vec<f32>>> {
        let d = &self.dims;
        let total: usize = steps.iter().map(|s| s.tokens.len()).sum();
        for s in steps.iter() {
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= d.vocab) {
                return Err(Error::Runner {
                    msg: format!(
                        "token id {bad} is outside the vocabulary (size {})",
                        d.vocab
                    ),
                });
            }
            if s.cache.k.len() != self.layers.len() {
                return Err(Error::Runner {
                    msg: format!(
                        "KV cache has {} layers, model has {}",
                        s.cache.k.len(),
                        self.layers.len()
                    ),
                });
            }
        }
        if total == 0 {
            return Ok(vec![Vec::new(); steps.len()]);
        }
        // Row r of the stacked batch belongs to sequence seq_of[r] at position pos_of[r].
        let mut seq_of = Vec::with_capacity(total);
        let mut pos_of = Vec::with_capacity(total);
        let mut h = vec![0f32; total * d.hidden];
        let mut r = 0;
        for (si, s) in steps.iter().enumerate() {
            for (i, &t) in s.tokens.iter().enumerate() {
                seq_of.push(si);
                pos_of.push(s.cache.len + i);
                self.embed
                    .dequantize_rows(t as usize, 1, &mut h[r * d.hidden..(r + 1) * d.hidden]);
                r += 1;
            }
        }
        for (li, layer) in self.layers.iter().enumerate() {
            self.layer_forward(li, layer, &mut h, steps, &seq_of, &pos_of);
        }
        for s in steps.iter_mut() {
            s.cache.len += s.tokens.len();
        }
        // Final norm and lm_head only on each sequence's last row.
        let mut last_rows = Vec::new();
        let mut which = Vec::new();
        let mut end = 0;
        for (si, s) in steps.iter().enumerate() {
            end += s.tokens.len();
            if !s.tokens.is_empty() {
                last_rows.extend_from_slice(&h[(end - 1) * d.hidden..end * d.hidden]);
                which.push(si);
            }
        }
        rms_norm(&mut last_rows, &self.final_norm, d.eps);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let logits = head.forward(&last_rows, which.len());
        let mut out = vec![Vec::new(); steps.len()];
        for (j, si) in which.into_iter().enumerate() {
            out[si] = logits[j * d.vocab..(j + 1) * d.vocab].to_vec();
        }
        Ok(out)
    }

    fn layer_forward(
        &self,
        li: usize,
        layer: &Layer,
        h: &mut [f32],
        steps: &mut [SeqStep<'_>],
        seq_of: &[usize],
        pos_of: &[usize],
    ) {
        let d = &self.dims;
        let t = seq_of.len();
        let (qd, kvd) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);

        let mut a = h.to_vec();
        rms_norm(&mut a, &layer.input_norm, d.eps);
        let mut q = layer.q.forward(&a, t);
        let mut k = layer.k.forward(&a, t);
        let v = layer.v.forward(&a, t);
        q.par_chunks_mut(qd)
            .zip(k.par_chunks_mut(kvd))
            .enumerate()
            .for_each(|(r, (qr, kr))| {
                self.rope.apply(qr, pos_of[r]);
                self.rope.apply(kr, pos_of[r]);
                if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                    rms_norm(qr, qn, d.eps);
                    rms_norm(kr, kn, d.eps);
                }
            });
        // Append this step's keys and values to each sequence's cache.
        let mut r = 0;
        for s in steps.iter_mut() {
            let n = s.tokens.len();
            s.cache.k[li].extend_from_slice(&k[r * kvd..(r + n) * kvd]);
            s.cache.v[li].extend_from_slice(&v[r * kvd..(r + n) * kvd]);
            r += n;
        }
        let caches: Vec<(&[f32], &[f32])> = steps
            .iter()
            .map(|s| (s.cache.k[li].as_slice(), s.cache.v[li].as_slice()))
            .collect();
        let mut attn = vec![0f32; t * qd];
        let group = d.heads / d.kv_heads;
        let scale = 1.0 / (d.head_dim as f32).sqrt();
        attn.par_chunks_mut(d.head_dim)
            .enumerate()
            .for_each(|(idx, out)| {
                let (row, head) = (idx / d.heads, idx % d.heads);
                let (kc, vc) = caches[seq_of[row]];
                let kvh = kv_head_of(head, group);
                let qh = &q[row * qd + head * d.head_dim..][..d.head_dim];
                attend(
                    qh,
                    kc,
                    vc,
                    pos_of[row] + 1,
                    kvd,
                    kvh * d.head_dim,
                    scale,
                    out,
                );
            });
        let o = layer.o.forward(&attn, t);
        h.iter_mut().zip(&o).for_each(|(x, y)| *x += y);

        let mut m = h.to_vec();
        rms_norm(&mut m, &layer.post_norm, d.eps);
        let gate = layer.gate.forward(&m, t);
        let up = layer.up.forward(&m, t);
        let act: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect();
        let down = layer.down.forward(&act, t);
        h.iter_mut().zip(&down).for_each(|(x, y)| *x += y);
    }
}

/// The key/value head a query head reads under grouped-query attention (transformers
/// `repeat_kv`: kv head j serves query heads j*group .. (j+1)*group).
pub fn kv_head_of(query_head: usize, group: usize) -> usize {
    query_head / group
}

#[inline]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Softmax attention of one query head over the first `ctx` cached positions. `kc`/`vc` are
/// [len, stride]; this head's slice starts at `off`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    ctx: usize,
    stride: usize,
    off: usize,
    scale: f32,
    out: &mut [f32],
) {
    let hd = q.len();
    let mut scores: Vec<f32> = (0..ctx)
        .map(|j| dot(q, &kc[j * stride + off..j * stride + off + hd]) * scale)
        .collect();
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.iter_mut().for_each(|o| *o = 0.0);
    for (j, p) in scores.iter().enumerate() {
        let w = p / sum;
        let vr = &vc[j * stride + off..j * stride + off + hd];
        for (o, v) in out.iter_mut().zip(vr) {
            *o += w * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_matches_hand_computation() {
        // x = [1, 2, 3, 4]: mean square 7.5.
        let mut x = vec![1.0f32, 2.0, 3.0, 4.0, -2.0, 0.0, 0.0, 0.0];
        let w = [1.0f32, 0.5, 2.0, -1.0];
        rms_norm(&mut x, &w, 1e-6);
        let inv = 1.0 / (7.5f64 + 1e-6).sqrt();
        let want = [inv, 2.0 * inv * 0.5, 3.0 * inv * 2.0, -4.0 * inv];
        for (a, b) in x[..4].iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
        // Second row: mean square 1 -> [-2/sqrt(1+eps), 0, 0, 0] * w.
        assert!((x[4] + 2.0 / (1.0f64 + 1e-6).sqrt() as f32).abs() < 1e-6);
    }

    #[test]
    fn rope_rotates_half_pairs() {
        // head_dim 4, base 100: inv_freq = [1, 1/10]. Pairs (0,2) and (1,3).
        let rope = Rope::new(100.0, 4);
        assert_eq!(rope.inv_freq, vec![1.0, 0.1]);
        let mut x = vec![1.0f32, 2.0, 3.0, 4.0];
        rope.apply(&mut x, 2);
        let (c0, s0) = (2.0f64.cos(), 2.0f64.sin());
        let (c1, s1) = (0.2f64.cos(), 0.2f64.sin());
        let want = [
            1.0 * c0 - 3.0 * s0,
            2.0 * c1 - 4.0 * s1,
            3.0 * c0 + 1.0 * s0,
            4.0 * c1 + 2.0 * s1,
        ];
        for (a, b) in x.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{x:?} vs {want:?}");
        }
        // Position 0 is the identity.
        let mut y = vec![1.0f32, 2.0, 3.0, 4.0];
        rope.apply(&mut y, 0);
        assert_eq!(y, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn gqa_maps_consecutive_query_heads_to_one_kv_head() {
        // 14 query heads, 2 kv heads (Qwen2.5-0.5B): heads 0..7 -> 0, 7..14 -> 1.
        let map: Vec<usize> = (0..14).map(|h| kv_head_of(h, 7)).collect();
        assert_eq!(map, [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]);
        // MHA is the identity.
        assert!((0..8).all(|h| kv_head_of(h, 1) == h));
    }

    #[test]
    fn attention_is_causal_and_normalized() {
        // One head, head_dim 2, three cached positions; ctx 1 must return v0 exactly.
        let kc = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0];
        let vc = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut out = [0f32; 2];
        attend(&[0.3, 0.7], &kc, &vc, 1, 2, 0, 1.0, &mut out);
        assert_eq!(out, [1.0, 2.0]);
        // Equal scores average the values.
        attend(&[0.0, 0.0], &kc, &vc, 3, 2, 0, 1.0, &mut out);
        assert!((out[0] - 3.0).abs() < 1e-6 && (out[1] - 4.0).abs() < 1e-6);
    }
}
