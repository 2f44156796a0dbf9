//! The decoder-layer forward of calibrated quantization, on the CPU: full calibration
//! sequences (no KV cache), f32 weights, and hooks where GPTQ needs the inputs of each group
//! of linears.
//!
//! The math is the runner's (`runner::forward`: same RMSNorm, RoPE, QK-norm placement, GQA
//! mapping, SiLU), arranged for throughput on many rows: linears are blocked GEMMs, attention
//! is per sample and head, and rows are processed in fixed chunks so the arithmetic (and the
//! order in which Hessians are accumulated) never depends on the thread count.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::arch::{ArchKind, LinearKind};
use crate::model::{Arch, Checkpoint};
use crate::runner::forward::{kv_head_of, rms_norm, silu, Rope};

/// Rows of one GEMM task: fixed so results do not depend on the number of threads.
const GEMM_ROWS: usize = 128;

/// A full-precision linear: weight [out, in] row-major (HF layout), optional bias.
#[derive(Clone, Debug)]
pub struct DenseLinear {
    pub out_features: usize,
    pub in_features: usize,
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

impl DenseLinear {
    /// `x` is [rows, in]; returns [rows, out].
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let (k, n) = (self.in_features, self.out_features);
        let rows = x.len() / k;
        debug_assert_eq!(rows * k, x.len());
        let w = ArrayView2::from_shape((n, k), &self.weight).expect("weight is [out, in]");
        let mut y = vec![0f32; rows * n];
        y.par_chunks_mut(GEMM_ROWS * n)
            .zip(x.par_chunks(GEMM_ROWS * k))
            .for_each(|(yc, xc)| {
                let r = xc.len() / k;
                let xa = ArrayView2::from_shape((r, k), xc).expect("rows of x");
                let mut ya = ArrayViewMut2::from_shape((r, n), yc).expect("rows of y");
                general_mat_mul(1.0, &xa, &w.t(), 0.0, &mut ya);
                if let Some(b) = &self.bias {
                    for row in yc.chunks_mut(n) {
                        row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                    }
                }
            });
        y
    }
}

/// One decoder layer in f32, as the calibration forward needs it.
pub struct LayerWeights {
    pub layer: usize,
    pub input_norm: Vec<f32>,
    pub post_norm: Vec<f32>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    /// Indexed by `LinearKind::ALL` order: q, k, v, o, gate, up, down.
    pub linears: Vec<DenseLinear>,
}

impl LayerWeights {
    pub fn linear(&self, kind: LinearKind) -> &DenseLinear {
        &self.linears[kind_index(kind)]
    }
    pub fn linear_mut(&mut self, kind: LinearKind) -> &mut DenseLinear {
        &mut self.linears[kind_index(kind)]
    }
}

pub fn kind_index(kind: LinearKind) -> usize {
    LinearKind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("kind is listed")
}

fn vector(ckpt: &Checkpoint, name: &str, len: usize) -> Result<Vec<f32>> {
    let view = ckpt.tensor(name)?;
    if view.info.shape != [len] {
        return Err(Error::tensor(
            name,
            format!("has shape {:?}, expected [{len}]", view.info.shape),
        ));
    }
    let v = view.to_f32_finite()?;
    ckpt.release(name);
    Ok(v)
}

/// Reads layer `layer` of `ckpt` in f32 (original weights).
pub fn load_layer(ckpt: &Checkpoint, layer: usize) -> Result<LayerWeights> {
    let arch = &ckpt.arch;
    let c = &arch.config;
    let p = Arch::layer_prefix(layer);
    let qk_norm = arch.kind == ArchKind::HunyuanDense && c.use_qk_norm;
    let mut linears = Vec::with_capacity(7);
    let specs = arch.layer_linears(layer);
    for kind in LinearKind::ALL {
        let spec = specs
            .iter()
            .find(|s| s.kind == kind)
            .expect("every kind is listed");
        let name = spec.weight_name();
        let view = ckpt.tensor(&name)?;
        if view.info.shape != [spec.out_features, spec.in_features] {
            return Err(Error::tensor(
                &name,
                format!(
                    "has shape {:?}, expected [{}, {}]",
                    view.info.shape, spec.out_features, spec.in_features
                ),
            ));
        }
        let weight = view.to_f32_finite()?;
        ckpt.release(&name);
        let bias = if spec.has_bias {
            Some(vector(ckpt, &spec.bias_name(), spec.out_features)?)
        } else {
            None
        };
        linears.push(DenseLinear {
            out_features: spec.out_features,
            in_features: spec.in_features,
            weight,
            bias,
        });
    }
    Ok(LayerWeights {
        layer,
        input_norm: vector(ckpt, &format!("{p}.input_layernorm.weight"), c.hidden_size)?,
        post_norm: vector(
            ckpt,
            &format!("{p}.post_attention_layernorm.weight"),
            c.hidden_size,
        )?,
        q_norm: if qk_norm {
            Some(vector(
                ckpt,
                &format!("{p}.self_attn.query_layernorm.weight"),
                c.head_dim,
            )?)
        } else {
            None
        },
        k_norm: if qk_norm {
            Some(vector(
                ckpt,
                &format!("{p}.self_attn.key_layernorm.weight"),
                c.head_dim,
            )?)
        } else {
            None
        },
        linears,
    })
}

/// Model-wide constants of the forward.
#[derive(Clone, Debug)]
pub struct ForwardDims {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub eps: f32,
    pub rope: Rope,
}

impl ForwardDims {
    pub fn of(arch: &Arch) -> Result<Self> {
        let c = &arch.config;
        if c.head_dim % 2 != 0
            || c.num_key_value_heads == 0
            || c.num_attention_heads % c.num_key_value_heads != 0
        {
            return Err(Error::config(
                &c.path,
                format!(
                    "head_dim {} / heads {} / kv heads {} do not form a valid attention layout",
                    c.head_dim, c.num_attention_heads, c.num_key_value_heads
                ),
            ));
        }
        Ok(ForwardDims {
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            intermediate: c.intermediate_size,
            eps: c.rms_norm_eps as f32,
            rope: Rope::new(arch.rope_base(), c.head_dim),
        })
    }

    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// Row-normalized copy of `x`.
pub fn normed(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut y = x.to_vec();
    y.par_chunks_mut(w.len() * 64)
        .for_each(|c| rms_norm(c, w, eps));
    y
}

/// Causal self-attention of a chunk of whole samples (`seqlen` rows each) with the layer's
/// current q/k/v weights; returns [rows, heads * head_dim], the input of o_proj.
pub fn attention(dims: &ForwardDims, lw: &LayerWeights, a: &[f32], seqlen: usize) -> Vec<f32> {
    let (qd, kvd, hd) = (dims.q_dim(), dims.kv_dim(), dims.head_dim);
    let mut q = lw.linear(LinearKind::Q).forward(a);
    let mut k = lw.linear(LinearKind::K).forward(a);
    let v = lw.linear(LinearKind::V).forward(a);
    q.par_chunks_mut(qd)
        .zip(k.par_chunks_mut(kvd))
        .enumerate()
        .for_each(|(r, (qr, kr))| {
            let pos = r % seqlen;
            dims.rope.apply(qr, pos);
            dims.rope.apply(kr, pos);
            if let (Some(qn), Some(kn)) = (&lw.q_norm, &lw.k_norm) {
                rms_norm(qr, qn, dims.eps);
                rms_norm(kr, kn, dims.eps);
            }
        });
    causal_attention(&q, &k, &v, seqlen, dims.heads, dims.kv_heads, hd)
}

/// Causal softmax attention of whole samples (`seqlen` rows each, scale 1/sqrt(head_dim),
/// GQA): `q` [rows, heads·hd], `k`/`v` [rows, kv_heads·hd] → [rows, heads·hd]. Also the CPU
/// backend's `attention_prefill`.
pub fn causal_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seqlen: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
) -> Vec<f32> {
    let (qd, kvd) = (heads * hd, kv_heads * hd);
    let rows = q.len() / qd;
    let samples = rows / seqlen;
    let group = heads / kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    // One task per (sample, head): gather that head's q/k/v, scores with a GEMM, causal
    // softmax, weighted sum with a second GEMM.
    let per_head: Vec<Vec<f32>> = (0..samples * heads)
        .into_par_iter()
        .map(|task| {
            let (s, h) = (task / heads, task % heads);
            let kvh = kv_head_of(h, group);
            let gather = |src: &[f32], stride: usize, off: usize| -> Vec<f32> {
                let mut out = Vec::with_capacity(seqlen * hd);
                for t in 0..seqlen {
                    let r = s * seqlen + t;
                    out.extend_from_slice(&src[r * stride + off..r * stride + off + hd]);
                }
                out
            };
            let qh = gather(q, qd, h * hd);
            let kh = gather(k, kvd, kvh * hd);
            let vh = gather(v, kvd, kvh * hd);
            let qa = ArrayView2::from_shape((seqlen, hd), &qh).expect("q");
            let ka = ArrayView2::from_shape((seqlen, hd), &kh).expect("k");
            let va = ArrayView2::from_shape((seqlen, hd), &vh).expect("v");
            let mut scores = ndarray::Array2::<f32>::zeros((seqlen, seqlen));
            general_mat_mul(scale, &qa, &ka.t(), 0.0, &mut scores);
            for (i, mut row) in scores.rows_mut().into_iter().enumerate() {
                let row = row.as_slice_mut().expect("contiguous");
                let max = row[..=i].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let mut sum = 0f32;
                for x in row[..=i].iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                row[..=i].iter_mut().for_each(|x| *x *= inv);
                row[i + 1..].iter_mut().for_each(|x| *x = 0.0);
            }
            let mut out = ndarray::Array2::<f32>::zeros((seqlen, hd));
            general_mat_mul(1.0, &scores, &va, 0.0, &mut out);
            out.into_raw_vec_and_offset().0
        })
        .collect();
    let mut attn = vec![0f32; rows * qd];
    for (task, out) in per_head.into_iter().enumerate() {
        let (s, h) = (task / heads, task % heads);
        for t in 0..seqlen {
            let r = s * seqlen + t;
            attn[r * qd + h * hd..r * qd + (h + 1) * hd]
                .copy_from_slice(&out[t * hd..(t + 1) * hd]);
        }
    }
    attn
}

/// silu(gate(m)) * up(m), the input of down_proj.
pub fn mlp_act(lw: &LayerWeights, m: &[f32]) -> Vec<f32> {
    let mut gate = lw.linear(LinearKind::Gate).forward(m);
    let up = lw.linear(LinearKind::Up).forward(m);
    gate.par_iter_mut()
        .zip(up.par_iter())
        .for_each(|(g, u)| *g = silu(*g) * u);
    gate
}

/// `h += y`, checking the result stays finite.
pub fn add_residual(h: &mut [f32], y: &[f32], layer: usize, what: &str) -> Result<()> {
    h.par_iter_mut()
        .zip(y.par_iter())
        .for_each(|(a, b)| *a += b);
    check_finite(h, layer, what)
}

pub fn check_finite(x: &[f32], layer: usize, what: &str) -> Result<()> {
    if let Some(i) = x.par_iter().position_any(|v| !v.is_finite()) {
        return Err(Error::Activation {
            at: format!("layer {layer}, {what}"),
            msg: format!(
                "value {} at element {i}: the calibration activations overflowed (extreme weights or a broken \
                 checkpoint); no output was produced",
                x[i]
            ),
        });
    }
    Ok(())
}
