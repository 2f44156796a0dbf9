//! The decoder on a compute `Backend` (the GPU runner; on the CPU backend it runs the same
//! code, which is how it is tested without a GPU). Same architecture rules as `forward`
//! (qwen2 / llama / hunyuan_v1_dense: QK-norm after RoPE, dynamic-alpha RoPE base), with the
//! numerics of a half-precision GPU runner: f32 residual stream, norms, RoPE and attention
//! arithmetic; linear inputs and the KV cache rounded to the model's 16-bit type (the cache in
//! the model dtype, as vLLM and transformers keep it), products accumulated in f32 (cuBLAS for
//! full-precision weights, the W4A16/W8A16 kernels for GPTQ v1 weights, which stay packed on
//! the device).
//!
//! The KV cache has a fixed number of slots (sequences decoded together) of `max_len`
//! positions; `generate_on` decodes greedily with continuous refill of finished slots, like
//! `generate::generate`.

use std::time::Instant;

use crate::backend::{AttnShape, Backend, GptqHost, GptqWeight, HalfKind};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::model::arch::{ArchKind, LinearKind};
use crate::model::{Arch, Checkpoint};
use crate::quant::QuantScheme;
use crate::runner::forward::{quant_scheme, Dims, Rope};
use crate::runner::generate::{
    argmax_with_margin, FinishReason, GenerateOptions, GenerateStats, Generation,
};

enum LinearWeight<B: Backend> {
    /// [out, in] 16-bit.
    Dense(B::Buf<u16>),
    Gptq(GptqWeight<B>),
}

/// `y = x W^T + b` on the backend, W in stored form.
pub struct BackendLinear<B: Backend> {
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
    half: HalfKind,
    weight: LinearWeight<B>,
    bias: Option<B::Buf<f32>>,
}

fn le_i32(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A float tensor as `half` bit patterns (stored bytes as is when they already are `half`).
fn half_bits(ckpt: &Checkpoint, name: &str, half: HalfKind) -> Result<Vec<u16>> {
    let view = ckpt.tensor(name)?;
    let dtype = view.float_dtype()?;
    view.check_finite()?;
    if (dtype == DType::BF16 && half == HalfKind::BF16)
        || (dtype == DType::F16 && half == HalfKind::F16)
    {
        return Ok(view
            .bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect());
    }
    Ok(view
        .to_f32_finite()?
        .into_iter()
        .map(|v| half.from_f32(v))
        .collect())
}

fn f32_tensor(ckpt: &Checkpoint, name: &str, len: usize) -> Result<Vec<f32>> {
    let view = ckpt.tensor(name)?;
    if view.info.shape.iter().product::<usize>() != len {
        return Err(Error::tensor(
            name,
            format!("has shape {:?}, expected {len} values", view.info.shape),
        ));
    }
    view.to_f32_finite()
}

impl<B: Backend> BackendLinear<B> {
    #[allow(clippy::too_many_arguments)]
    fn load(
        b: &B,
        ckpt: &Checkpoint,
        prefix: &str,
        out_features: usize,
        in_features: usize,
        has_bias: bool,
        scheme: Option<&QuantScheme>,
        half: HalfKind,
    ) -> Result<Self> {
        let bias = if has_bias {
            Some(b.upload(&f32_tensor(ckpt, &format!("{prefix}.bias"), out_features)?)?)
        } else {
            None
        };
        let wname = format!("{prefix}.weight");
        let weight = if ckpt.contains(&wname) {
            let shape = &ckpt.tensor(&wname)?.info.shape;
            if shape != &[out_features, in_features] {
                return Err(Error::tensor(
                    &wname,
                    format!("has shape {shape:?}, expected [{out_features}, {in_features}]"),
                ));
            }
            LinearWeight::Dense(b.upload(&half_bits(ckpt, &wname, half)?)?)
        } else {
            let qname = format!("{prefix}.qweight");
            let scheme = scheme.ok_or_else(|| {
                Error::tensor(
                    &qname,
                    "is missing, or GPTQ-packed without a usable quantization_config",
                )
            })?;
            let ints = |suffix: &str| -> Result<Vec<i32>> {
                let name = format!("{prefix}.{suffix}");
                let view = ckpt.tensor(&name)?;
                if view.info.dtype_name != "I32" {
                    return Err(Error::tensor(
                        &name,
                        format!("is {}, expected I32", view.info.dtype_name),
                    ));
                }
                Ok(le_i32(view.bytes))
            };
            let qweight = ints("qweight")?;
            let qzeros = ints("qzeros")?;
            let scales = half_bits(ckpt, &format!("{prefix}.scales"), half)?;
            let g_idx = if ckpt.contains(&format!("{prefix}.g_idx")) {
                ints("g_idx")?
            } else {
                let gl = scheme.group_len(in_features);
                (0..in_features).map(|k| (k / gl) as i32).collect()
            };
            LinearWeight::Gptq(GptqWeight::upload(
                b,
                &GptqHost {
                    name: prefix,
                    scheme: *scheme,
                    in_features,
                    out_features,
                    qweight: &qweight,
                    qzeros: &qzeros,
                    scales: &scales,
                    half,
                    g_idx: &g_idx,
                },
            )?)
        };
        for suffix in ["weight", "bias", "qweight", "qzeros", "scales", "g_idx"] {
            ckpt.release(&format!("{prefix}.{suffix}"));
        }
        Ok(BackendLinear {
            name: prefix.to_string(),
            in_features,
            out_features,
            half,
            weight,
            bias,
        })
    }

    /// Bytes of the weight (and bias) held on the backend.
    fn bytes(&self, b: &B) -> u64 {
        let w = match &self.weight {
            LinearWeight::Dense(w) => b.len_of(w) * 2,
            LinearWeight::Gptq(g) => g.bytes(),
        };
        (w + self.bias.as_ref().map_or(0, |x| b.len_of(x) * 4)) as u64
    }

    /// `x16` [m, in] in `half` -> `out` [m, out] f32.
    fn forward(&self, b: &B, x16: &B::Buf<u16>, m: usize, out: &mut B::Buf<f32>) -> Result<()> {
        match &self.weight {
            LinearWeight::Dense(w) => b.gemm(
                x16,
                w,
                self.half,
                m,
                self.out_features,
                self.in_features,
                out,
            )?,
            LinearWeight::Gptq(w) => b.gemm_gptq(x16, w, m, out)?,
        }
        if let Some(bias) = &self.bias {
            b.add_bias(out, bias)?;
        }
        Ok(())
    }
}

struct Layer<B: Backend> {
    input_norm: B::Buf<f32>,
    post_norm: B::Buf<f32>,
    qk_norm: Option<(B::Buf<f32>, B::Buf<f32>)>,
    q: BackendLinear<B>,
    k: BackendLinear<B>,
    v: BackendLinear<B>,
    o: BackendLinear<B>,
    gate: BackendLinear<B>,
    up: BackendLinear<B>,
    down: BackendLinear<B>,
}

/// A decoder whose weights live on backend `B`.
pub struct BackendModel<B: Backend> {
    pub kind: ArchKind,
    pub dims: Dims,
    pub intermediate: usize,
    /// The 16-bit type linear inputs, full-precision weights and the KV cache use.
    pub half: HalfKind,
    pub quant: Option<QuantScheme>,
    embed: B::Buf<u16>,
    layers: Vec<Layer<B>>,
    final_norm: B::Buf<f32>,
    /// `None` = tied to the embedding table.
    lm_head: Option<BackendLinear<B>>,
    inv_freq: B::Buf<f32>,
    /// Bytes of the weights as held on the backend (packed GPTQ tensors, 16-bit dense
    /// weights, f32 norms).
    pub weight_bytes: u64,
    /// What the backend's allocator counted for the load (GPU only; includes alignment).
    pub allocated_bytes: Option<u64>,
}

/// Per-layer keys and values of `slots` sequences, [slots, max_len, kv_heads * head_dim] in
/// the model's 16-bit type (`BackendModel::half`).
pub struct BackendCache<B: Backend> {
    k: Vec<B::Buf<u16>>,
    v: Vec<B::Buf<u16>>,
    pub slots: usize,
    pub max_len: usize,
    /// Bytes of all layers' keys and values (2 bytes each).
    pub bytes: u64,
}

impl<B: Backend> BackendModel<B> {
    /// Loads every weight of `ckpt` onto `b` (full precision as 16-bit, GPTQ v1 packed).
    pub fn load(b: &B, ckpt: &Checkpoint) -> Result<Self> {
        let before = b.memory().allocated_bytes;
        let arch = &ckpt.arch;
        let c = &arch.config;
        let quant = quant_scheme(arch)?;
        let half = HalfKind::for_dtype(ckpt.model_dtype()?);
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
        let embed_name = arch.embed_tokens().name;
        let embed_shape = ckpt.tensor(&embed_name)?.info.shape.clone();
        if embed_shape != [dims.vocab, dims.hidden] {
            return Err(Error::tensor(
                &embed_name,
                format!(
                    "has shape {embed_shape:?}, expected [{}, {}]",
                    dims.vocab, dims.hidden
                ),
            ));
        }
        let embed = b.upload(&half_bits(ckpt, &embed_name, half)?)?;
        ckpt.release(&embed_name);
        let mut intermediate = 0;
        let mut layers = Vec::with_capacity(arch.num_layers());
        for l in 0..arch.num_layers() {
            let p = Arch::layer_prefix(l);
            let specs = arch.layer_linears(l);
            let lin = |kind: LinearKind| -> Result<BackendLinear<B>> {
                let spec = specs
                    .iter()
                    .find(|s| s.kind == kind)
                    .ok_or_else(|| Error::config(&c.path, format!("no {kind:?} linear")))?;
                BackendLinear::load(
                    b,
                    ckpt,
                    &spec.prefix,
                    spec.out_features,
                    spec.in_features,
                    spec.has_bias,
                    quant.as_ref(),
                    half,
                )
            };
            let norm = |name: String, len: usize| -> Result<B::Buf<f32>> {
                b.upload(&f32_tensor(ckpt, &name, len)?)
            };
            let qk_norm = if arch.kind == ArchKind::HunyuanDense && c.use_qk_norm {
                Some((
                    norm(
                        format!("{p}.self_attn.query_layernorm.weight"),
                        dims.head_dim,
                    )?,
                    norm(format!("{p}.self_attn.key_layernorm.weight"), dims.head_dim)?,
                ))
            } else {
                None
            };
            let gate = lin(LinearKind::Gate)?;
            intermediate = gate.out_features;
            layers.push(Layer {
                input_norm: norm(format!("{p}.input_layernorm.weight"), dims.hidden)?,
                post_norm: norm(format!("{p}.post_attention_layernorm.weight"), dims.hidden)?,
                qk_norm,
                q: lin(LinearKind::Q)?,
                k: lin(LinearKind::K)?,
                v: lin(LinearKind::V)?,
                o: lin(LinearKind::O)?,
                gate,
                up: lin(LinearKind::Up)?,
                down: lin(LinearKind::Down)?,
            });
        }
        let final_norm = b.upload(&f32_tensor(ckpt, &arch.final_norm().name, dims.hidden)?)?;
        let lm_head = if ckpt.contains("lm_head.weight") || ckpt.contains("lm_head.qweight") {
            Some(BackendLinear::load(
                b,
                ckpt,
                "lm_head",
                dims.vocab,
                dims.hidden,
                false,
                quant.as_ref(),
                half,
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
        let rope = Rope::new(arch.rope_base(), dims.head_dim);
        let inv_freq = b.upload(&rope.inv_freq)?;
        b.synchronize()?;
        let after = b.memory().allocated_bytes;
        let allocated_bytes = (after > 0).then(|| after.saturating_sub(before));
        let f32s = |x: &B::Buf<f32>| (b.len_of(x) * 4) as u64;
        let weight_bytes = (b.len_of(&embed) * 2) as u64
            + f32s(&final_norm)
            + f32s(&inv_freq)
            + lm_head.as_ref().map_or(0, |h| h.bytes(b))
            + layers
                .iter()
                .map(|l| {
                    f32s(&l.input_norm)
                        + f32s(&l.post_norm)
                        + l.qk_norm.as_ref().map_or(0, |(q, k)| f32s(q) + f32s(k))
                        + [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                            .iter()
                            .map(|x| x.bytes(b))
                            .sum::<u64>()
                })
                .sum::<u64>();
        Ok(BackendModel {
            kind: arch.kind,
            dims,
            intermediate,
            half,
            quant,
            embed,
            layers,
            final_norm,
            lm_head,
            inv_freq,
            weight_bytes,
            allocated_bytes,
        })
    }

    fn attn_shape(&self, max_len: usize) -> AttnShape {
        AttnShape {
            heads: self.dims.heads,
            kv_heads: self.dims.kv_heads,
            head_dim: self.dims.head_dim,
            max_len,
        }
    }

    /// A zeroed KV cache of `slots` sequences of up to `max_len` positions.
    pub fn new_cache(&self, b: &B, slots: usize, max_len: usize) -> Result<BackendCache<B>> {
        let per_layer = slots * max_len * self.dims.kv_heads * self.dims.head_dim;
        let mut cache = BackendCache {
            k: Vec::with_capacity(self.layers.len()),
            v: Vec::with_capacity(self.layers.len()),
            slots,
            max_len,
            bytes: (per_layer * 2 * 2 * self.layers.len()) as u64,
        };
        for _ in &self.layers {
            cache.k.push(b.zeros(per_layer)?);
            cache.v.push(b.zeros(per_layer)?);
        }
        Ok(cache)
    }

    /// Runs `tokens` (row r: slot `slots[r]`, position `positions[r]`) through the model,
    /// writing their keys/values into the cache, and returns the logits of the rows listed in
    /// `last_rows`, [last_rows.len(), vocab].
    pub fn forward(
        &self,
        b: &B,
        cache: &mut BackendCache<B>,
        tokens: &[u32],
        slots: &[u32],
        positions: &[u32],
        last_rows: &[u32],
    ) -> Result<Vec<f32>> {
        let d = &self.dims;
        let t = tokens.len();
        if slots.len() != t || positions.len() != t {
            return Err(Error::Runner {
                msg: format!(
                    "forward: {t} tokens but {} slots and {} positions",
                    slots.len(),
                    positions.len()
                ),
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&x| x as usize >= d.vocab) {
            return Err(Error::Runner {
                msg: format!(
                    "token id {bad} is outside the vocabulary (size {})",
                    d.vocab
                ),
            });
        }
        if let Some(r) = (0..t)
            .find(|&r| slots[r] as usize >= cache.slots || positions[r] as usize >= cache.max_len)
        {
            return Err(Error::Runner {
                msg: format!(
                    "forward: row {r} is slot {} position {}; the KV cache has {} slots of {} positions",
                    slots[r], positions[r], cache.slots, cache.max_len
                ),
            });
        }
        if let Some(&bad) = last_rows.iter().find(|&&r| r as usize >= t) {
            return Err(Error::Runner {
                msg: format!("forward: last row {bad} of a {t}-row step"),
            });
        }
        if t == 0 {
            return Ok(Vec::new());
        }
        let shape = self.attn_shape(cache.max_len);
        let (qd, kvd, hid, inter) = (
            shape.q_width(),
            shape.kv_width(),
            d.hidden,
            self.intermediate,
        );
        let ids = b.upload(tokens)?;
        let sl = b.upload(slots)?;
        let pos = b.upload(positions)?;
        let mut h = b.zeros::<f32>(t * hid)?;
        b.embedding(&self.embed, self.half, hid, &ids, &mut h)?;
        let mut a = b.zeros::<f32>(t * hid)?;
        let mut a16 = b.zeros::<u16>(t * hid)?;
        let mut q = b.zeros::<f32>(t * qd)?;
        let mut qn = b.zeros::<f32>(t * qd)?;
        let mut k = b.zeros::<f32>(t * kvd)?;
        let mut kn = b.zeros::<f32>(t * kvd)?;
        let mut v = b.zeros::<f32>(t * kvd)?;
        let mut attn = b.zeros::<f32>(t * qd)?;
        let mut attn16 = b.zeros::<u16>(t * qd)?;
        let mut o = b.zeros::<f32>(t * hid)?;
        let mut gate = b.zeros::<f32>(t * inter)?;
        let mut up = b.zeros::<f32>(t * inter)?;
        let mut act = b.zeros::<f32>(t * inter)?;
        let mut act16 = b.zeros::<u16>(t * inter)?;
        for (li, layer) in self.layers.iter().enumerate() {
            b.rms_norm(&h, &layer.input_norm, d.eps, &mut a)?;
            b.to_half(&a, self.half, &mut a16)?;
            layer.q.forward(b, &a16, t, &mut q)?;
            layer.k.forward(b, &a16, t, &mut k)?;
            layer.v.forward(b, &a16, t, &mut v)?;
            b.rope(&mut q, &pos, &self.inv_freq, d.head_dim)?;
            b.rope(&mut k, &pos, &self.inv_freq, d.head_dim)?;
            let (qa, ka) = match &layer.qk_norm {
                // HunYuan: RMSNorm over each head AFTER RoPE.
                Some((qw, kw)) => {
                    b.rms_norm(&q, qw, d.eps, &mut qn)?;
                    b.rms_norm(&k, kw, d.eps, &mut kn)?;
                    (&qn, &kn)
                }
                None => (&q, &k),
            };
            b.kv_append(
                ka,
                &v,
                &sl,
                &pos,
                &shape,
                self.half,
                &mut cache.k[li],
                &mut cache.v[li],
            )?;
            b.attention(
                qa,
                &cache.k[li],
                &cache.v[li],
                self.half,
                &sl,
                &pos,
                &shape,
                &mut attn,
            )?;
            b.to_half(&attn, self.half, &mut attn16)?;
            layer.o.forward(b, &attn16, t, &mut o)?;
            b.add(&mut h, &o)?;
            b.rms_norm(&h, &layer.post_norm, d.eps, &mut a)?;
            b.to_half(&a, self.half, &mut a16)?;
            layer.gate.forward(b, &a16, t, &mut gate)?;
            layer.up.forward(b, &a16, t, &mut up)?;
            b.silu_mul(&gate, &up, &mut act)?;
            b.to_half(&act, self.half, &mut act16)?;
            layer.down.forward(b, &act16, t, &mut o)?;
            b.add(&mut h, &o)?;
        }
        let n = last_rows.len();
        let rows = b.upload(last_rows)?;
        let mut last = b.zeros::<f32>(n * hid)?;
        b.gather_rows(&h, hid, &rows, &mut last)?;
        let mut normed = b.zeros::<f32>(n * hid)?;
        b.rms_norm(&last, &self.final_norm, d.eps, &mut normed)?;
        let mut normed16 = b.zeros::<u16>(n * hid)?;
        b.to_half(&normed, self.half, &mut normed16)?;
        let mut logits = b.zeros::<f32>(n * d.vocab)?;
        match &self.lm_head {
            Some(head) => head.forward(b, &normed16, n, &mut logits)?,
            None => b.gemm(
                &normed16,
                &self.embed,
                self.half,
                n,
                d.vocab,
                hid,
                &mut logits,
            )?,
        }
        b.download(&logits)
    }
}

struct Active {
    index: usize,
    slot: u32,
    /// Tokens already in the cache.
    len: usize,
    pending: Vec<u32>,
    out: Generation,
}

/// Greedy continuation of every prompt on backend `b`, `opts.max_batch` sequences at a time,
/// a finished sequence's slot refilled from the queue at once. Same results layout as
/// `generate::generate`. Returns the KV cache's size in bytes with the stats.
pub fn generate_on<B: Backend>(
    b: &B,
    model: &BackendModel<B>,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Result<(Vec<Generation>, GenerateStats, u64)> {
    let start = Instant::now();
    let mut stats = GenerateStats::default();
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(Error::Runner {
            msg: format!("prompt {i} has no tokens"),
        });
    }
    let max_batch = opts.max_batch.max(1).min(prompts.len().max(1));
    let max_len = prompts.iter().map(Vec::len).max().unwrap_or(0) + opts.max_new_tokens + 1;
    let mut cache = model.new_cache(b, max_batch, max_len)?;
    let mut results: Vec<Option<Generation>> = vec![None; prompts.len()];
    let mut queue = (0..prompts.len()).rev().collect::<Vec<_>>();
    let mut free_slots: Vec<u32> = (0..max_batch as u32).rev().collect();
    let mut active: Vec<Active> = Vec::new();
    loop {
        while let Some(&slot) = free_slots.last() {
            let Some(i) = queue.pop() else { break };
            free_slots.pop();
            stats.prompt_tokens += prompts[i].len();
            active.push(Active {
                index: i,
                slot,
                len: 0,
                pending: prompts[i].clone(),
                out: Generation {
                    token_ids: Vec::new(),
                    n_prompt_tokens: prompts[i].len(),
                    finish: FinishReason::Length,
                    first_logits: None,
                    margins: Vec::new(),
                },
            });
        }
        if active.is_empty() {
            break;
        }
        if opts.max_new_tokens == 0 {
            for a in active.drain(..) {
                free_slots.push(a.slot);
                results[a.index] = Some(a.out);
            }
            continue;
        }
        let step_start = Instant::now();
        let prefilling = active.iter().any(|a| a.out.margins.is_empty());
        let (mut tokens, mut slots, mut positions, mut last_rows) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for a in &active {
            for (j, &tok) in a.pending.iter().enumerate() {
                tokens.push(tok);
                slots.push(a.slot);
                positions.push((a.len + j) as u32);
            }
            last_rows.push(tokens.len() as u32 - 1);
        }
        let logits = model.forward(b, &mut cache, &tokens, &slots, &positions, &last_rows)?;
        stats.forward_calls += 1;
        let dt = step_start.elapsed().as_secs_f64();
        if prefilling {
            stats.prefill_step_seconds += dt;
        } else {
            stats.decode_step_seconds += dt;
            stats.decode_step_tokens += active.len();
        }
        let vocab = model.dims.vocab;
        let mut still = Vec::with_capacity(active.len());
        for (j, mut a) in active.drain(..).enumerate() {
            let lg = &logits[j * vocab..(j + 1) * vocab];
            let (tok, margin) = argmax_with_margin(lg);
            if opts.keep_first_logits && a.out.first_logits.is_none() {
                a.out.first_logits = Some(lg.to_vec());
            }
            a.out.margins.push(margin);
            a.len += a.pending.len();
            let done = if opts.stop_ids.contains(&tok) {
                a.out.finish = FinishReason::Stop;
                true
            } else {
                a.out.token_ids.push(tok);
                stats.generated_tokens += 1;
                if a.out.token_ids.len() >= opts.max_new_tokens {
                    a.out.finish = FinishReason::Length;
                    true
                } else {
                    false
                }
            };
            if done {
                free_slots.push(a.slot);
                results[a.index] = Some(a.out);
            } else {
                a.pending.clear();
                a.pending.push(tok);
                still.push(a);
            }
        }
        active = still;
    }
    stats.seconds = start.elapsed().as_secs_f64();
    let out = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.ok_or_else(|| Error::Runner {
                msg: format!("internal: prompt {i} never finished"),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((out, stats, cache.bytes))
}
