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

mod step;

pub use step::StepBuffers;

use std::time::Instant;

use crate::backend::{AttnShape, Backend, GptqHost, GptqWeight, HalfKind};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::model::arch::{ArchKind, LinearKind, LinearSpec};
use crate::model::{Arch, Checkpoint};
use crate::quant::QuantScheme;
use crate::runner::forward::{quant_scheme, Dims, Rope};
use crate::runner::generate::{argmax_with_margin, GenerateOptions, GenerateStats, Generation};
use crate::runner::weights::i32_tensor;

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

/// A linear's stored tensors read into host memory, before upload (`BackendLinear::upload`):
/// what lets linears that share an input be concatenated into one (`HostLinear::concat`).
struct HostLinear {
    name: String,
    in_features: usize,
    out_features: usize,
    weight: HostWeight,
    bias: Option<Vec<f32>>,
}

enum HostWeight {
    /// [out, in] in `half`.
    Dense(Vec<u16>),
    /// GPTQ v1 as stored: qweight [in/pf, out], qzeros [groups, out/pf], scales [groups, out]
    /// in `half`, g_idx [in].
    Gptq {
        scheme: QuantScheme,
        qweight: Vec<i32>,
        qzeros: Vec<i32>,
        scales: Vec<u16>,
        g_idx: Vec<i32>,
    },
}

/// Appends the `width`-long row `r` of each part (`parts[i]` has rows of `widths[i]`).
fn concat_rows<T: Copy>(parts: &[&[T]], widths: &[usize], rows: usize) -> Vec<T> {
    let total: usize = widths.iter().sum();
    let mut out = Vec::with_capacity(rows * total);
    for r in 0..rows {
        for (p, &w) in parts.iter().zip(widths) {
            out.extend_from_slice(&p[r * w..(r + 1) * w]);
        }
    }
    out
}

impl HostLinear {
    /// Reads `{prefix}.weight` (16-bit) or the GPTQ v1 tensors, and the bias, then releases
    /// them from the checkpoint's page cache.
    #[allow(clippy::too_many_arguments)]
    fn read(
        ckpt: &Checkpoint,
        prefix: &str,
        out_features: usize,
        in_features: usize,
        has_bias: bool,
        scheme: Option<&QuantScheme>,
        half: HalfKind,
    ) -> Result<Self> {
        let bias = if has_bias {
            Some(f32_tensor(ckpt, &format!("{prefix}.bias"), out_features)?)
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
            HostWeight::Dense(half_bits(ckpt, &wname, half)?)
        } else {
            let qname = format!("{prefix}.qweight");
            let scheme = scheme.ok_or_else(|| {
                Error::tensor(
                    &qname,
                    "is missing, or GPTQ-packed without a usable quantization_config",
                )
            })?;
            let ints = |suffix: &str| i32_tensor(ckpt, &format!("{prefix}.{suffix}"));
            let qweight = ints("qweight")?;
            let qzeros = ints("qzeros")?;
            let scales = half_bits(ckpt, &format!("{prefix}.scales"), half)?;
            let g_idx = if ckpt.contains(&format!("{prefix}.g_idx")) {
                ints("g_idx")?
            } else {
                let gl = scheme.group_len(in_features);
                (0..in_features).map(|k| (k / gl) as i32).collect()
            };
            HostWeight::Gptq {
                scheme: *scheme,
                qweight,
                qzeros,
                scales,
                g_idx,
            }
        };
        for suffix in ["weight", "bias", "qweight", "qzeros", "scales", "g_idx"] {
            ckpt.release(&format!("{prefix}.{suffix}"));
        }
        Ok(HostLinear {
            name: prefix.to_string(),
            in_features,
            out_features,
            weight,
            bias,
        })
    }

    /// The parts (same input) as one linear whose outputs are theirs side by side, in order:
    /// dense rows appended; GPTQ qweight, qzeros and scales rows concatenated (same scheme,
    /// identical g_idx, every part's out_features a multiple of the pack factor). Biases are
    /// concatenated when every part has one. `Err(parts)` unchanged when they cannot be fused
    /// (mixed dense/GPTQ, different schemes or g_idx, some parts without a bias, tensors of
    /// unexpected sizes: those are reported by the separate upload).
    fn concat(parts: Vec<HostLinear>) -> std::result::Result<HostLinear, Vec<HostLinear>> {
        let Some(first) = parts.first() else {
            return Err(parts);
        };
        let k = first.in_features;
        let widths: Vec<usize> = parts.iter().map(|p| p.out_features).collect();
        let n: usize = widths.iter().sum();
        let same_input = parts.iter().all(|p| p.in_features == k);
        let bias_all = parts.iter().all(|p| p.bias.is_some());
        let bias_none = parts.iter().all(|p| p.bias.is_none());
        if parts.len() < 2 || !same_input || !(bias_all || bias_none) {
            return Err(parts);
        }
        if parts
            .iter()
            .any(|p| p.bias.as_ref().is_some_and(|b| b.len() != p.out_features))
        {
            return Err(parts);
        }
        let weight = match &first.weight {
            HostWeight::Dense(_) => {
                let mut ws = Vec::with_capacity(parts.len());
                for p in &parts {
                    match &p.weight {
                        HostWeight::Dense(w) if w.len() == p.out_features * k => {
                            ws.push(w.as_slice())
                        }
                        _ => return Err(parts),
                    }
                }
                HostWeight::Dense(ws.concat())
            }
            HostWeight::Gptq {
                scheme: s0,
                g_idx: g0,
                ..
            } => {
                let pf = s0.pack_factor();
                let groups = s0.num_groups(k);
                if k % pf != 0 {
                    return Err(parts);
                }
                let (mut qw, mut qz, mut sc) = (Vec::new(), Vec::new(), Vec::new());
                for p in &parts {
                    match &p.weight {
                        HostWeight::Gptq {
                            scheme,
                            qweight,
                            qzeros,
                            scales,
                            g_idx,
                        } if scheme == s0
                            && g_idx == g0
                            && p.out_features % pf == 0
                            && qweight.len() == k / pf * p.out_features
                            && qzeros.len() == groups * p.out_features / pf
                            && scales.len() == groups * p.out_features =>
                        {
                            qw.push(qweight.as_slice());
                            qz.push(qzeros.as_slice());
                            sc.push(scales.as_slice());
                        }
                        _ => return Err(parts),
                    }
                }
                let zw: Vec<usize> = widths.iter().map(|w| w / pf).collect();
                HostWeight::Gptq {
                    scheme: *s0,
                    qweight: concat_rows(&qw, &widths, k / pf),
                    qzeros: concat_rows(&qz, &zw, groups),
                    scales: concat_rows(&sc, &widths, groups),
                    g_idx: g0.clone(),
                }
            }
        };
        let bias = bias_all.then(|| {
            parts
                .iter()
                .flat_map(|p| p.bias.as_deref().unwrap_or(&[]).iter().copied())
                .collect()
        });
        Ok(HostLinear {
            name: parts
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join("+"),
            in_features: k,
            out_features: n,
            weight,
            bias,
        })
    }
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
        let host = HostLinear::read(
            ckpt,
            prefix,
            out_features,
            in_features,
            has_bias,
            scheme,
            half,
        )?;
        Self::upload(b, &host, half)
    }

    /// Copies a host linear to the backend (GPTQ shapes checked by `GptqWeight::upload`).
    fn upload(b: &B, h: &HostLinear, half: HalfKind) -> Result<Self> {
        let bias = match &h.bias {
            Some(x) => Some(b.upload(x)?),
            None => None,
        };
        let weight = match &h.weight {
            HostWeight::Dense(w) => LinearWeight::Dense(b.upload(w)?),
            HostWeight::Gptq {
                scheme,
                qweight,
                qzeros,
                scales,
                g_idx,
            } => LinearWeight::Gptq(GptqWeight::upload(
                b,
                &GptqHost {
                    name: &h.name,
                    scheme: *scheme,
                    in_features: h.in_features,
                    out_features: h.out_features,
                    qweight,
                    qzeros,
                    scales,
                    half,
                    g_idx,
                },
            )?),
        };
        Ok(BackendLinear {
            name: h.name.clone(),
            in_features: h.in_features,
            out_features: h.out_features,
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

/// Linears that read the same input (q, k, v; gate, up): one fused linear whose output rows
/// are theirs side by side (one launch instead of several), or the separate linears when they
/// could not be fused (`HostLinear::concat`) or fusion is off (`LoadOptions::fuse`).
enum Group<B: Backend> {
    Fused(BackendLinear<B>),
    Separate(Vec<BackendLinear<B>>),
}

impl<B: Backend> Group<B> {
    /// Loads `specs` (same input, in output order), fused when `fuse` and possible.
    fn load(
        b: &B,
        ckpt: &Checkpoint,
        specs: &[&LinearSpec],
        scheme: Option<&QuantScheme>,
        half: HalfKind,
        fuse: bool,
    ) -> Result<Self> {
        if !fuse {
            return specs
                .iter()
                .map(|s| {
                    BackendLinear::load(
                        b,
                        ckpt,
                        &s.prefix,
                        s.out_features,
                        s.in_features,
                        s.has_bias,
                        scheme,
                        half,
                    )
                })
                .collect::<Result<Vec<_>>>()
                .map(Group::Separate);
        }
        let parts = specs
            .iter()
            .map(|s| {
                HostLinear::read(
                    ckpt,
                    &s.prefix,
                    s.out_features,
                    s.in_features,
                    s.has_bias,
                    scheme,
                    half,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        match HostLinear::concat(parts) {
            Ok(fused) => Ok(Group::Fused(BackendLinear::upload(b, &fused, half)?)),
            Err(parts) => parts
                .iter()
                .map(|p| BackendLinear::upload(b, p, half))
                .collect::<Result<Vec<_>>>()
                .map(Group::Separate),
        }
    }

    fn linears(&self) -> Vec<&BackendLinear<B>> {
        match self {
            Group::Fused(l) => vec![l],
            Group::Separate(ls) => ls.iter().collect(),
        }
    }

    fn is_fused(&self) -> bool {
        matches!(self, Group::Fused(_))
    }
}

struct Layer<B: Backend> {
    input_norm: B::Buf<f32>,
    post_norm: B::Buf<f32>,
    qk_norm: Option<(B::Buf<f32>, B::Buf<f32>)>,
    /// q, k, v.
    qkv: Group<B>,
    o: BackendLinear<B>,
    /// gate, up.
    gate_up: Group<B>,
    down: BackendLinear<B>,
}

/// How `BackendModel::load_with` loads a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Load q|k|v and gate|up as one fused linear each where their tensors allow it (same
    /// storage, scheme and g_idx, biases on all or none); separate linears otherwise.
    pub fuse: bool,
    /// Run the decoder's small ops fused (`Backend::add_rms_norm_half`, `qkv_rope_norm`,
    /// `silu_mul_fused_half`: about 10 launches fewer per layer on the GPU; the same
    /// arithmetic), and pick greedy tokens on the device (`Backend::argmax`: two values per
    /// row come back instead of the logits).
    pub fuse_ops: bool,
    /// Record the second decode step in a row at one batch size as a graph and replay it for
    /// the next ones (`Backend::record`; the CUDA backend must have been opened with its own
    /// stream, `CudaOptions::own_stream`; other backends record nothing).
    pub graphs: bool,
}

impl Default for LoadOptions {
    /// Everything on (measured on an H200, docs/perf.md); for A/B timing the environment
    /// turns each off: `HYQ_RUNNER_FUSE=0` (separate linears), `HYQ_RUNNER_FUSE_OPS=0`
    /// (separate small ops, logits to the host), `HYQ_CUDA_GRAPHS=0` (no graphs).
    fn default() -> Self {
        LoadOptions {
            fuse: std::env::var_os("HYQ_RUNNER_FUSE").is_none_or(|v| v != "0"),
            fuse_ops: std::env::var_os("HYQ_RUNNER_FUSE_OPS").is_none_or(|v| v != "0"),
            graphs: crate::backend::cuda::graphs_asked(),
        }
    }
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
    /// `LoadOptions::fuse_ops`.
    fuse_ops: bool,
    /// `LoadOptions::graphs`.
    graphs: bool,
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
    /// Loads every weight of `ckpt` onto `b` (full precision as 16-bit, GPTQ v1 packed),
    /// with the default `LoadOptions` (q|k|v and gate|up fused where possible).
    pub fn load(b: &B, ckpt: &Checkpoint) -> Result<Self> {
        Self::load_with(b, ckpt, LoadOptions::default())
    }

    /// `load` with explicit options.
    pub fn load_with(b: &B, ckpt: &Checkpoint, opts: LoadOptions) -> Result<Self> {
        let before = b.memory().allocated_bytes;
        let arch = &ckpt.arch;
        let c = &arch.config;
        let quant = quant_scheme(arch)?;
        let half = HalfKind::for_dtype(ckpt.model_dtype()?);
        let dims = Dims::of(arch)?;
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
            let spec = |kind: LinearKind| -> Result<&LinearSpec> {
                specs
                    .iter()
                    .find(|s| s.kind == kind)
                    .ok_or_else(|| Error::config(&c.path, format!("no {kind:?} linear")))
            };
            let lin = |kind: LinearKind| -> Result<BackendLinear<B>> {
                let spec = spec(kind)?;
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
            let (q, k, v) = (
                spec(LinearKind::Q)?,
                spec(LinearKind::K)?,
                spec(LinearKind::V)?,
            );
            let (gate, up) = (spec(LinearKind::Gate)?, spec(LinearKind::Up)?);
            let (qd, kvd) = (dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim);
            for (s, want) in [(q, qd), (k, kvd), (v, kvd), (up, gate.out_features)] {
                if s.out_features != want {
                    return Err(Error::tensor(
                        &s.prefix,
                        format!("has {} outputs, expected {want}", s.out_features),
                    ));
                }
            }
            intermediate = gate.out_features;
            let group = |specs: &[&LinearSpec]| {
                Group::load(b, ckpt, specs, quant.as_ref(), half, opts.fuse)
            };
            layers.push(Layer {
                input_norm: norm(format!("{p}.input_layernorm.weight"), dims.hidden)?,
                post_norm: norm(format!("{p}.post_attention_layernorm.weight"), dims.hidden)?,
                qk_norm,
                qkv: group(&[q, k, v])?,
                o: lin(LinearKind::O)?,
                gate_up: group(&[gate, up])?,
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
                        + l.qkv
                            .linears()
                            .into_iter()
                            .chain(l.gate_up.linears())
                            .chain([&l.o, &l.down])
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
            fuse_ops: opts.fuse_ops,
            graphs: opts.graphs,
            weight_bytes,
            allocated_bytes,
        })
    }

    /// `Backend::reserve_for_gptq` for every GPTQ linear, before a step is recorded.
    fn reserve_for_recording(&self, b: &B) -> Result<()> {
        let linears = self.layers.iter().flat_map(|l| {
            let mut v = l.qkv.linears();
            v.extend(l.gate_up.linears());
            v.extend([&l.o, &l.down]);
            v
        });
        for lin in linears.chain(self.lm_head.as_ref()) {
            if let LinearWeight::Gptq(w) = &lin.weight {
                b.reserve_for_gptq(w.out_features)?;
            }
        }
        Ok(())
    }

    /// Layers whose q|k|v, and whose gate|up, were loaded fused.
    pub fn fused_layers(&self) -> (usize, usize) {
        (
            self.layers.iter().filter(|l| l.qkv.is_fused()).count(),
            self.layers.iter().filter(|l| l.gate_up.is_fused()).count(),
        )
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
        let logits = self.forward_on_device(b, cache, tokens, slots, positions, last_rows)?;
        b.download(&logits)
    }

    /// `forward`, leaving the logits on the backend.
    pub fn forward_on_device(
        &self,
        b: &B,
        cache: &mut BackendCache<B>,
        tokens: &[u32],
        slots: &[u32],
        positions: &[u32],
        last_rows: &[u32],
    ) -> Result<B::Buf<f32>> {
        self.check_step(cache, tokens, slots, positions, last_rows)?;
        if tokens.is_empty() {
            return b.zeros::<f32>(0);
        }
        let mut step = StepBuffers::new(b, self, tokens.len(), last_rows.len(), cache.max_len)?;
        step.write_inputs(b, tokens, slots, positions, last_rows)?;
        self.run_step(b, cache, &mut step, false)?;
        Ok(step.logits)
    }

    /// A step's inputs against the vocabulary and the cache: every token id in range, one slot
    /// and position per token inside the cache, last rows among the step's rows.
    fn check_step(
        &self,
        cache: &BackendCache<B>,
        tokens: &[u32],
        slots: &[u32],
        positions: &[u32],
        last_rows: &[u32],
    ) -> Result<()> {
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
        Ok(())
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
    // The buffers of the last decode step (reused while the batch keeps its size) and of a
    // step with prompt tokens (dropped after it).
    let mut decode_step: Option<StepBuffers<B>> = None;
    let mut prompt_step: Option<StepBuffers<B>> = None;
    // The recorded decode step (`LoadOptions::graphs`): it runs in `decode_step`'s buffers.
    let mut decode_graph: Option<B::Graph> = None;
    // Off once the backend records nothing (the CPU): nothing to replay, nothing to report.
    let mut graphs_on = model.graphs;
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
                out: Generation::start(prompts[i].len()),
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
        model.check_step(&cache, &tokens, &slots, &positions, &last_rows)?;
        // A decode step (one token per row) runs in the buffers of the previous decode step
        // when the batch kept its size; a step with prompt tokens gets its own.
        let decode = tokens.len() == active.len();
        // Decode steps of the same batch size in a row share buffers, and from the second on
        // (one that runs once, as the batch drains at the end, is not worth recording) the
        // recorded graph.
        let repeat = decode && decode_step.as_ref().is_some_and(|s| s.rows == tokens.len());
        if !repeat {
            let fresh = StepBuffers::new(b, model, tokens.len(), last_rows.len(), cache.max_len)?;
            if decode {
                decode_step = Some(fresh);
                decode_graph = None;
            } else {
                prompt_step = Some(fresh);
            }
        }
        let step = if decode {
            &mut decode_step
        } else {
            &mut prompt_step
        }
        .as_mut()
        .expect("set just above");
        step.write_inputs(b, &tokens, &slots, &positions, &last_rows)?;
        // Picks on the device with the fused ops, unless some row's first logits are to be
        // kept: then they come from the downloaded logits.
        let keep = opts.keep_first_logits && active.iter().any(|a| a.out.first_logits.is_none());
        let device_picks = model.fuse_ops && !keep;
        let replayed = match &decode_graph {
            Some(graph) if decode => match b.replay(graph) {
                Ok(()) => true,
                Err(e) => {
                    stats.graph_note = Some(e.to_string());
                    decode_graph = None;
                    false
                }
            },
            _ => false,
        };
        if replayed {
            stats.graph_replays += 1;
        } else {
            model.run_step(b, &mut cache, step, device_picks)?;
            if repeat && graphs_on && stats.graph_note.is_none() {
                // Recorded after running it as usual (kernels loaded, scratch sized), with
                // the device picks (a decode step never keeps first logits).
                let recorded = model.reserve_for_recording(b).and_then(|()| {
                    b.record(&mut || model.run_step(b, &mut cache, step, model.fuse_ops))
                });
                match recorded {
                    Ok(Some(graph)) => decode_graph = Some(graph),
                    Ok(None) => graphs_on = false,
                    Err(e) => stats.graph_note = Some(e.to_string()),
                }
            }
        }
        let vocab = model.dims.vocab;
        let (picks, host_logits) = if device_picks {
            let picks = b
                .download(&step.pick)?
                .into_iter()
                .zip(b.download(&step.margin)?);
            (picks.collect::<Vec<_>>(), None)
        } else {
            let host = b.download(&step.logits)?;
            let picks = host.chunks(vocab).map(argmax_with_margin).collect();
            (picks, Some(host))
        };
        prompt_step = None;
        stats.forward_calls += 1;
        let dt = step_start.elapsed().as_secs_f64();
        if prefilling {
            stats.prefill_step_seconds += dt;
        } else {
            stats.decode_step_seconds += dt;
            stats.decode_step_tokens += active.len();
        }
        let mut still = Vec::with_capacity(active.len());
        for (j, mut a) in active.drain(..).enumerate() {
            let (tok, margin) = picks[j];
            if opts.keep_first_logits && a.out.first_logits.is_none() {
                if let Some(host) = &host_logits {
                    a.out.first_logits = Some(host[j * vocab..(j + 1) * vocab].to_vec());
                }
            }
            a.len += a.pending.len();
            if a.out.accept(tok, margin, opts, &mut stats) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;

    fn gptq_part(name: &str, out: usize, k: usize, seed: i32, g_idx: Vec<i32>) -> HostLinear {
        let scheme = QuantScheme::new(4, 32, false).unwrap();
        let (pf, groups) = (scheme.pack_factor(), scheme.num_groups(k));
        let mix = |i: usize| (i as i32).wrapping_mul(0x9e37_79b9_u32 as i32) ^ seed;
        HostLinear {
            name: name.into(),
            in_features: k,
            out_features: out,
            weight: HostWeight::Gptq {
                scheme,
                qweight: (0..k / pf * out).map(mix).collect(),
                qzeros: (0..groups * out / pf).map(|i| mix(i + 7)).collect(),
                scales: (0..groups * out)
                    .map(|i| HalfKind::BF16.from_f32(0.01 + (i % 13) as f32 * 1e-3))
                    .collect(),
                g_idx,
            },
            bias: Some((0..out).map(|i| i as f32 * 0.1 + seed as f32).collect()),
        }
    }

    /// The fused GPTQ linear's output is the parts' outputs side by side (bit-identical on
    /// the CPU backend), act-order g_idx included.
    #[test]
    fn fused_gptq_output_is_the_parts_side_by_side() {
        let b = CpuBackend::new();
        let (k, m) = (128usize, 3usize);
        let g_idx: Vec<i32> = (0..k).map(|i| ((i * 5) % k / 32) as i32).collect();
        let widths = [64usize, 32, 32];
        let parts: Vec<HostLinear> = widths
            .iter()
            .enumerate()
            .map(|(i, &n)| gptq_part(&format!("p{i}"), n, k, i as i32 + 1, g_idx.clone()))
            .collect();
        let x: Vec<u16> = (0..m * k)
            .map(|i| HalfKind::BF16.from_f32(((i * 37) % 101) as f32 / 50.0 - 1.0))
            .collect();
        let xd = b.upload(&x).unwrap();
        let mut want = vec![Vec::new(); m];
        for p in &parts {
            let lin = BackendLinear::upload(&b, p, HalfKind::BF16).unwrap();
            let mut out = b.zeros::<f32>(m * p.out_features).unwrap();
            lin.forward(&b, &xd, m, &mut out).unwrap();
            for (r, row) in out.chunks(p.out_features).enumerate() {
                want[r].extend_from_slice(row);
            }
        }
        let Ok(fused) = HostLinear::concat(parts) else {
            panic!("parts not fused")
        };
        assert_eq!(fused.name, "p0+p1+p2");
        let lin = BackendLinear::upload(&b, &fused, HalfKind::BF16).unwrap();
        let mut out = b.zeros::<f32>(m * 128).unwrap();
        lin.forward(&b, &xd, m, &mut out).unwrap();
        assert_eq!(out, want.concat());
    }

    #[test]
    fn parts_that_differ_are_not_fused() {
        let k = 64;
        let seq: Vec<i32> = (0..k).map(|i| (i / 32) as i32).collect();
        let mut other = seq.clone();
        other.swap(0, 40);
        let fused = |parts: Vec<HostLinear>| HostLinear::concat(parts).is_ok();
        assert!(fused(vec![
            gptq_part("a", 16, k, 1, seq.clone()),
            gptq_part("b", 8, k, 2, seq.clone()),
        ]));
        // Different g_idx.
        assert!(!fused(vec![
            gptq_part("a", 16, k, 1, seq.clone()),
            gptq_part("b", 8, k, 2, other),
        ]));
        // A bias on one part only.
        let mut nb = gptq_part("b", 8, k, 2, seq.clone());
        nb.bias = None;
        assert!(!fused(vec![gptq_part("a", 16, k, 1, seq.clone()), nb]));
        // Dense with GPTQ.
        let dense = HostLinear {
            name: "d".into(),
            in_features: k,
            out_features: 8,
            weight: HostWeight::Dense(vec![0; 8 * k]),
            bias: Some(vec![0.0; 8]),
        };
        assert!(!fused(vec![gptq_part("a", 16, k, 1, seq.clone()), dense]));
        // Different schemes.
        let mut s8 = gptq_part("b", 8, k, 2, seq.clone());
        if let HostWeight::Gptq { scheme, .. } = &mut s8.weight {
            *scheme = QuantScheme::new(4, 64, false).unwrap();
        }
        assert!(!fused(vec![gptq_part("a", 16, k, 1, seq), s8]));
        // A single part.
        assert!(!fused(vec![gptq_part("a", 16, k, 1, Vec::new())]));
    }
}
