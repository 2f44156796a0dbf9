//! Calibrated GPTQ with the layer loop on a `Backend` (`quantize --method gptq --device
//! cuda`): the same true-sequential order, resume store and manifest records as
//! `gptq_pipeline` (the CPU path, which stays the reference and is untouched by this one), with
//! the calibration hidden states resident on the backend, the forward made of backend ops
//! (16-bit GEMM inputs with f32 accumulation, causal prefill attention, RMSNorm, RoPE, SiLU),
//! the Hessians accumulated there (`Backend::hessian_add_half`: the 16-bit inputs the GEMMs
//! see, f32 sums) and each linear solved, packed, dequantized and measured there
//! (`Backend::gptq_linear`: on the GPU only the packed tensors come back).
//!
//! It is generic over the backend so the CPU backend runs it too: that is how it is tested on
//! machines without a GPU (tests compare it with the CPU pipeline's results; they are close,
//! not identical: the forward rounds GEMM inputs to 16 bits like the reference's fp16 model,
//! where the CPU pipeline keeps f32).
//!
//! Memory: the hidden states stay resident in the model's 16-bit type (what a bf16/f16 model's
//! residual stream holds; each residual sum is made in f32 and rounded once), the attention
//! outputs of one layer in 16 bits up to `MAX_STORED_ATTN_BYTES` (recomputed above it).
//!
//! Host threads around the loop: the next layer's weights are read while this one runs, each
//! finished layer is saved to the resume store on a thread and then handed to the output
//! writer (`LayerSink`, `pipeline::quantize_on`), which writes the shards alongside.

use std::path::Path;

use crate::backend::{AttnShape, Backend, BackendHessian, HalfKind, LinearJob, PrefillMath};
use crate::dtype::DType;
use crate::error::Result;
use crate::manifest::{CalibratedError, TensorRecord};
use crate::model::arch::LinearKind;
use crate::model::Checkpoint;
use crate::progress::Progress;
use crate::quant::calib_forward::{kind_index, load_layer, DenseLinear, ForwardDims, LayerWeights};
use crate::quant::gptq_pipeline::{
    calibration_batch, calibration_record, embed, fingerprint, restore_quantized_layer,
    CalibratedRun, GptqSettings, GroupSolver,
};
use crate::quant::pipeline::Timer;
use crate::quant::resume::LinearResult;
use crate::quant::resume::ResumeStore;
use crate::quant::QuantScheme;
use crate::quant::Weight;

/// Tokens per forward chunk (rounded to whole samples), as the CPU pipeline.
const CHUNK_TOKENS: usize = 4096;
/// Attention outputs of one layer kept on the device up to this size (at 7B, 128 x 2048 they
/// are exactly 2 GiB in 16 bits; with the hidden states in 16 bits too that stays under the
/// 8 GiB target, and larger budgets are recomputed in o_proj's residual pass instead).
const MAX_STORED_ATTN_BYTES: usize = 2 << 30;

/// A linear on the backend: the weight in the model's half type, f32 bias.
struct DeviceLinear<B: Backend> {
    out_features: usize,
    in_features: usize,
    weight: B::Buf<u16>,
    bias: Option<B::Buf<f32>>,
}

/// A linear's weight rounded to the model's 16-bit type (exact for a checkpoint stored in
/// that type): what the backend copy holds.
fn to_half_weight(lin: &DenseLinear, half: HalfKind) -> Vec<u16> {
    use rayon::prelude::*;
    lin.weight.par_iter().map(|&v| half.from_f32(v)).collect()
}

/// A layer as the reader thread hands it over: the f32 weights (the solver's statistics and
/// the host paths read them) and the 16-bit copies to upload, converted on the reader thread
/// so the loop only copies (the conversion was ~0.35 s of loop time per 7B layer).
struct HostLayer {
    lw: LayerWeights,
    /// `LinearKind::ALL` order.
    w16: Vec<Vec<u16>>,
}

impl HostLayer {
    fn read(ckpt: &Checkpoint, layer: usize, half: HalfKind) -> Result<Self> {
        let lw = load_layer(ckpt, layer)?;
        let w16 = lw.linears.iter().map(|l| to_half_weight(l, half)).collect();
        Ok(HostLayer { lw, w16 })
    }
}

impl<B: Backend> DeviceLinear<B> {
    /// `w16`: the weight in the model's half type ([`to_half_weight`]).
    fn upload(b: &B, lin: &DenseLinear, w16: &[u16]) -> Result<Self> {
        debug_assert_eq!(w16.len(), lin.weight.len());
        Ok(DeviceLinear {
            out_features: lin.out_features,
            in_features: lin.in_features,
            weight: b.upload(w16)?,
            bias: match &lin.bias {
                Some(v) => Some(b.upload(v)?),
                None => None,
            },
        })
    }

    /// `x` [rows, in] in `half` -> [rows, out] f32.
    fn forward(&self, b: &B, x: &B::Buf<u16>, rows: usize, half: HalfKind) -> Result<B::Buf<f32>> {
        let mut y = b.zeros::<f32>(rows * self.out_features)?;
        b.gemm(
            x,
            &self.weight,
            half,
            rows,
            self.out_features,
            self.in_features,
            &mut y,
        )?;
        if let Some(bias) = &self.bias {
            b.add_bias(&mut y, bias)?;
        }
        Ok(y)
    }
}

/// One decoder layer's weights on the backend.
struct DeviceLayer<B: Backend> {
    input_norm: B::Buf<f32>,
    post_norm: B::Buf<f32>,
    q_norm: Option<B::Buf<f32>>,
    k_norm: Option<B::Buf<f32>>,
    /// `LinearKind::ALL` order.
    linears: Vec<DeviceLinear<B>>,
}

impl<B: Backend> DeviceLayer<B> {
    /// `w16`: the linears' weights in the model's half type, `LinearKind::ALL` order.
    fn upload(b: &B, lw: &LayerWeights, w16: &[Vec<u16>]) -> Result<Self> {
        let opt = |v: &Option<Vec<f32>>| -> Result<Option<B::Buf<f32>>> {
            match v {
                Some(v) => Ok(Some(b.upload(v)?)),
                None => Ok(None),
            }
        };
        Ok(DeviceLayer {
            input_norm: b.upload(&lw.input_norm)?,
            post_norm: b.upload(&lw.post_norm)?,
            q_norm: opt(&lw.q_norm)?,
            k_norm: opt(&lw.k_norm)?,
            linears: lw
                .linears
                .iter()
                .zip(w16)
                .map(|(l, w)| DeviceLinear::upload(b, l, w))
                .collect::<Result<_>>()?,
        })
    }

    fn linear(&self, kind: LinearKind) -> &DeviceLinear<B> {
        &self.linears[kind_index(kind)]
    }
}

/// The forward context of one run.
struct Fwd<'a, B: Backend> {
    b: &'a B,
    ckpt: &'a Checkpoint,
    dims: &'a ForwardDims,
    half: HalfKind,
    seqlen: usize,
    inv_freq: B::Buf<f32>,
    /// Largest size of one layer's stored attention outputs (16-bit); above it they are
    /// recomputed in o_proj's residual pass.
    attn_budget: usize,
}

impl<B: Backend> Fwd<'_, B> {
    fn norm(&self, x: &B::Buf<f32>, w: &B::Buf<f32>) -> Result<B::Buf<f32>> {
        let mut y = self.b.zeros::<f32>(self.b.len_of(x))?;
        self.b.rms_norm(x, w, self.dims.eps, &mut y)?;
        Ok(y)
    }

    /// A chunk of the (16-bit) hidden states in f32.
    fn widen(&self, c: &B::Buf<u16>) -> Result<B::Buf<f32>> {
        let mut y = self.b.zeros::<f32>(self.b.len_of(c))?;
        self.b.widen_half(c, self.half, &mut y)?;
        Ok(y)
    }

    /// `c += y` for a 16-bit chunk of hidden states: the sum in f32, stored rounded (a bf16/
    /// f16 model's residual stream holds the same roundings).
    fn residual_add(&self, c: &mut B::Buf<u16>, y: &B::Buf<f32>) -> Result<()> {
        let mut x = self.widen(c)?;
        self.b.add(&mut x, y)?;
        self.b.to_half(&x, self.half, c)
    }

    fn to_half(&self, x: &B::Buf<f32>) -> Result<B::Buf<u16>> {
        let mut y = self.b.zeros::<u16>(self.b.len_of(x))?;
        self.b.to_half(x, self.half, &mut y)?;
        Ok(y)
    }

    /// Adds `x`'s rows to a Hessian from their 16-bit rounding (the values the GEMMs see), as
    /// the reference does with an fp16 model; tensor cores on the GPU.
    fn hessian_add(&self, hs: &mut BackendHessian<B>, x: &B::Buf<f32>, rows: usize) -> Result<()> {
        let xh = self.to_half(x)?;
        hs.add_half(self.b, &xh, self.half, rows)
    }

    fn linear(&self, lin: &DeviceLinear<B>, x: &B::Buf<f32>, rows: usize) -> Result<B::Buf<f32>> {
        let xh = self.to_half(x)?;
        lin.forward(self.b, &xh, rows, self.half)
    }

    /// Causal self-attention of whole samples (`attention_prefill`: cuBLAS batched GEMMs on
    /// the GPU, not the runner's decode-oriented fused kernel).
    fn attention(&self, dev: &DeviceLayer<B>, a: &B::Buf<f32>, rows: usize) -> Result<B::Buf<f32>> {
        let (b, d) = (self.b, self.dims);
        let ah = self.to_half(a)?;
        let mut q = dev.linear(LinearKind::Q).forward(b, &ah, rows, self.half)?;
        let mut k = dev.linear(LinearKind::K).forward(b, &ah, rows, self.half)?;
        let v = dev.linear(LinearKind::V).forward(b, &ah, rows, self.half)?;
        drop(ah);
        let positions: Vec<u32> = (0..rows).map(|r| (r % self.seqlen) as u32).collect();
        let positions = b.upload(&positions)?;
        b.rope(&mut q, &positions, &self.inv_freq, d.head_dim)?;
        b.rope(&mut k, &positions, &self.inv_freq, d.head_dim)?;
        // HunYuan's QK-norm comes after RoPE (calib_forward::attention).
        if let (Some(qn), Some(kn)) = (&dev.q_norm, &dev.k_norm) {
            let mut q2 = b.zeros::<f32>(b.len_of(&q))?;
            b.rms_norm(&q, qn, d.eps, &mut q2)?;
            q = q2;
            let mut k2 = b.zeros::<f32>(b.len_of(&k))?;
            b.rms_norm(&k, kn, d.eps, &mut k2)?;
            k = k2;
        }
        let shape = AttnShape {
            heads: d.heads,
            kv_heads: d.kv_heads,
            head_dim: d.head_dim,
            max_len: self.seqlen,
        };
        let mut out = b.zeros::<f32>(rows * d.q_dim())?;
        b.attention_prefill(
            &q,
            &k,
            &v,
            rows / self.seqlen,
            self.seqlen,
            &shape,
            PrefillMath::Tf32,
            &mut out,
        )?;
        Ok(out)
    }

    /// silu(gate(m)) * up(m).
    fn mlp_act(&self, dev: &DeviceLayer<B>, m: &B::Buf<f32>, rows: usize) -> Result<B::Buf<f32>> {
        let mh = self.to_half(m)?;
        let g = dev
            .linear(LinearKind::Gate)
            .forward(self.b, &mh, rows, self.half)?;
        let u = dev
            .linear(LinearKind::Up)
            .forward(self.b, &mh, rows, self.half)?;
        let mut act = self.b.zeros::<f32>(self.b.len_of(&g))?;
        self.b.silu_mul(&g, &u, &mut act)?;
        Ok(act)
    }
}

/// Solves `kinds` against the backend Hessian (`Backend::gptq_linear`: on the GPU the weight
/// stays on the device) and swaps the dequantized weights into `dev` for the rest of the
/// forward; the packed tensors and statistics go to the solver's results.
fn solve_group<B: Backend>(
    f: &Fwd<'_, B>,
    s: &mut GroupSolver,
    kinds: &[LinearKind],
    hs: &BackendHessian<B>,
    lw: &LayerWeights,
    dev: &mut DeviceLayer<B>,
    clock: &mut Timer,
) -> Result<()> {
    for &kind in kinds {
        let prefix = s
            .prefixes
            .iter()
            .find(|p| p.0 == kind)
            .map(|p| p.1.clone())
            .expect("every kind has a prefix");
        let name = format!("{prefix}.weight");
        let lin = lw.linear(kind);
        let (n_out, k_in) = (lin.out_features, lin.in_features);
        let weight = Weight {
            name: &name,
            data: &lin.weight,
            out_features: n_out,
            in_features: k_in,
            scale_dtype: s.scale_dtype,
        };
        // The device copy is the checkpoint's weight exactly when the checkpoint stores it in
        // the same 16-bit type.
        let half_dtype = match f.half {
            HalfKind::BF16 => DType::BF16,
            HalfKind::F16 => DType::F16,
        };
        let exact16 = f.ckpt.info(&name).and_then(|i| i.dtype) == Some(half_dtype);
        let job = LinearJob {
            weight: &weight,
            w16: &dev.linear(kind).weight,
            half: f.half,
            exact16,
            h: &hs.h,
            h_version: Some(hs.version),
            nsamples: hs.nsamples,
            cfg: &s.cfg,
        };
        let t = std::time::Instant::now();
        let solved = f.b.gptq_linear(&job)?;
        let parts: f64 = solved.phases.iter().map(|p| p.1).sum();
        for &(phase, secs) in &solved.phases {
            clock.add(phase, secs);
        }
        clock.add("solve", (t.elapsed().as_secs_f64() - parts).max(0.0));
        dev.linears[kind_index(kind)].weight = solved.deq16;
        s.results.push(LinearResult {
            prefix,
            packed: solved.packed,
            record: TensorRecord {
                name,
                shape: vec![n_out, k_in],
                error: solved.error,
                calibrated: Some(CalibratedError {
                    output_rel_error: solved.output_err_sq.sqrt(),
                    rtn_output_rel_error: solved.rtn_output_err_sq.sqrt(),
                    damp_used: solved.damp_used,
                    damp_retries: solved.retries,
                }),
            },
        });
    }
    Ok(())
}

/// One decoder layer over the resident hidden states (`h`: chunks of whole samples, `rows`
/// each), in place; with a solver, each group is quantized as soon as its inputs are known.
#[allow(clippy::too_many_arguments)]
fn run_layer_on<B: Backend>(
    f: &Fwd<'_, B>,
    lw: &LayerWeights,
    dev: &mut DeviceLayer<B>,
    h: &mut [B::Buf<u16>],
    rows: &[usize],
    mut solver: Option<&mut GroupSolver>,
    need_output: bool,
    clock: &mut Timer,
) -> Result<()> {
    let (b, dims) = (f.b, f.dims);
    // Each pass over the chunks is timed as "forward" up to a synchronize, so the phase holds
    // the device time of its kernels (Hessian updates included).
    if let Some(s) = solver.as_deref_mut() {
        let mut hs = BackendHessian::new(b, dims.hidden)?;
        clock.time("forward", || -> Result<()> {
            for (c, &r) in h.iter().zip(rows) {
                let a = f.norm(&f.widen(c)?, &dev.input_norm)?;
                f.hessian_add(&mut hs, &a, r)?;
            }
            b.synchronize()
        })?;
        solve_group(
            f,
            s,
            &[LinearKind::Q, LinearKind::K, LinearKind::V],
            &hs,
            lw,
            dev,
            clock,
        )?;
    }

    // Keep the attention outputs for o_proj's residual pass when they fit the budget, else
    // recompute them there (same quantized q/k/v, same arithmetic: the same values).
    let attn_bytes = rows.iter().sum::<usize>() * dims.q_dim() * 2;
    let store_attn = attn_bytes <= f.attn_budget;
    let mut attn = Vec::with_capacity(h.len());
    let mut h_o = if solver.is_some() {
        Some(BackendHessian::new(b, dims.q_dim())?)
    } else {
        None
    };
    // The attention outputs are kept in 16 bits: exactly what o_proj's GEMM and its Hessian
    // read, at half the memory.
    clock.time("forward", || -> Result<()> {
        for (c, &r) in h.iter().zip(rows) {
            let a = f.norm(&f.widen(c)?, &dev.input_norm)?;
            let at = f.to_half(&f.attention(dev, &a, r)?)?;
            if let Some(hs) = h_o.as_mut() {
                hs.add_half(b, &at, f.half, r)?;
            }
            if store_attn {
                attn.push(at);
            }
        }
        b.synchronize()
    })?;
    if let (Some(s), Some(hs)) = (solver.as_deref_mut(), h_o.as_ref()) {
        solve_group(f, s, &[LinearKind::O], hs, lw, dev, clock)?;
    }
    drop(h_o);
    clock.time("forward", || -> Result<()> {
        for (i, (c, &r)) in h.iter_mut().zip(rows).enumerate() {
            let recomputed;
            let at = match attn.get(i) {
                Some(at) => at,
                None => {
                    let a = f.norm(&f.widen(c)?, &dev.input_norm)?;
                    recomputed = f.to_half(&f.attention(dev, &a, r)?)?;
                    &recomputed
                }
            };
            let y = dev.linear(LinearKind::O).forward(b, at, r, f.half)?;
            f.residual_add(c, &y)?;
        }
        b.synchronize()
    })?;
    drop(attn);

    if let Some(s) = solver {
        let mut hs = BackendHessian::new(b, dims.hidden)?;
        clock.time("forward", || -> Result<()> {
            for (c, &r) in h.iter().zip(rows) {
                let m = f.norm(&f.widen(c)?, &dev.post_norm)?;
                f.hessian_add(&mut hs, &m, r)?;
            }
            b.synchronize()
        })?;
        solve_group(
            f,
            s,
            &[LinearKind::Gate, LinearKind::Up],
            &hs,
            lw,
            dev,
            clock,
        )?;
        drop(hs);
        let mut hs = BackendHessian::new(b, dims.intermediate)?;
        clock.time("forward", || -> Result<()> {
            for (c, &r) in h.iter().zip(rows) {
                let m = f.norm(&f.widen(c)?, &dev.post_norm)?;
                let act = f.mlp_act(dev, &m, r)?;
                f.hessian_add(&mut hs, &act, r)?;
            }
            b.synchronize()
        })?;
        solve_group(f, s, &[LinearKind::Down], &hs, lw, dev, clock)?;
    }
    if need_output {
        clock.time("forward", || -> Result<()> {
            for (c, &r) in h.iter_mut().zip(rows) {
                let m = f.norm(&f.widen(c)?, &dev.post_norm)?;
                let act = f.mlp_act(dev, &m, r)?;
                let y = f.linear(dev.linear(LinearKind::Down), &act, r)?;
                f.residual_add(c, &y)?;
            }
            b.synchronize()
        })?;
    }
    Ok(())
}

/// The loop's error when the output writer is gone (its own error is the one to report).
pub(crate) const WRITER_STOPPED: &str = "the output writer stopped";

/// Where finished layers go as soon as they are in the resume store, in layer order (the
/// output writer running alongside the loop, `pipeline::quantize_on`).
pub(crate) type LayerSink = std::sync::mpsc::SyncSender<(usize, Vec<LinearResult>)>;

fn send_layer(sink: Option<&LayerSink>, layer: usize, results: Vec<LinearResult>) -> Result<()> {
    match sink {
        None => Ok(()),
        Some(tx) => tx
            .send((layer, results))
            .map_err(|_| crate::error::Error::Runner {
                msg: WRITER_STOPPED.into(),
            }),
    }
}

/// Waits for a layer save started on a thread.
fn wait_save(pending: Option<std::thread::ScopedJoinHandle<'_, Result<()>>>) -> Result<()> {
    match pending {
        None => Ok(()),
        Some(h) => h.join().unwrap_or_else(|_| {
            Err(crate::error::Error::Runner {
                msg: "the thread saving a finished layer panicked".into(),
            })
        }),
    }
}

/// `gptq_pipeline::run_layers` with the layer loop on `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_layers_on<B: Backend>(
    b: &B,
    ckpt: &Checkpoint,
    scheme: &QuantScheme,
    settings: &GptqSettings,
    scale_dtype: DType,
    partial: &Path,
    progress: &dyn Progress,
    clock: &mut Timer,
    sink: Option<&LayerSink>,
) -> Result<CalibratedRun> {
    settings.check()?;
    let (corpus, set) = clock.time("calibration data", || calibration_batch(ckpt, settings))?;
    let mut fp = fingerprint(ckpt, scheme, settings, &corpus)?;
    // A partial output of the CPU pipeline is not continued with this loop, nor the reverse
    // (their numerics differ); the CPU pipeline's fingerprint is unchanged.
    fp["layer_loop"] = serde_json::json!("backend");
    let store = ResumeStore::open(partial, &fp, settings.resume)?;
    let n = ckpt.arch.num_layers();
    let done = store.finished_layers(n);
    let dims = ForwardDims::of(&ckpt.arch)?;
    let half = HalfKind::for_dtype(ckpt.model_dtype()?);
    let seqlen = set.seqlen;
    let f = Fwd {
        b,
        ckpt,
        dims: &dims,
        half,
        seqlen,
        inv_freq: b.upload(&dims.rope.inv_freq)?,
        // `HYQ_ATTN_BUDGET` (bytes) is a test hook: 0 forces the recompute path.
        attn_budget: std::env::var("HYQ_ATTN_BUDGET")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(MAX_STORED_ATTN_BYTES),
    };

    // Hidden states resident on the backend, in chunks of whole samples; embedded chunk by
    // chunk so the host never holds them all.
    let chunk_rows = (CHUNK_TOKENS / seqlen).max(1) * seqlen;
    let mut h = Vec::new();
    let mut rows = Vec::new();
    for toks in set.tokens.chunks(chunk_rows) {
        let e = clock.time("read", || -> Result<Vec<u16>> {
            use rayon::prelude::*;
            Ok(embed(ckpt, toks)?
                .par_iter()
                .map(|&v| half.from_f32(v))
                .collect())
        })?;
        h.push(b.upload(&e)?);
        rows.push(toks.len());
    }

    progress.begin("gptq", n as u64, 0);
    let replay_until = if done == n { 0 } else { done };
    let skipped = |layer: usize| layer < done && layer >= replay_until;
    // The next layer's weights are read (mmap -> f32) on a thread while this one runs on the
    // backend: one layer ahead at most (a rendezvous channel: the reader holds the next layer
    // until it is taken), so the host holds two layers' f32 weights.
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<HostLayer>>(0);
        scope.spawn(move || {
            for layer in (0..n).filter(|&l| !skipped(l)) {
                if tx.send(HostLayer::read(ckpt, layer, half)).is_err() {
                    return;
                }
            }
        });
        let mut pending: Option<std::thread::ScopedJoinHandle<'_, Result<()>>> = None;
        for layer in 0..n {
            if layer < done {
                // A finished layer: to the writer straight from the store.
                let stored = clock.time("read", || store.load_layer(layer))?;
                send_layer(sink, layer, stored)?;
            }
            if skipped(layer) {
                progress.step(0, &format!("layer {layer} (resumed)"));
                continue;
            }
            let HostLayer { mut lw, mut w16 } = clock.time("read (wait)", || {
                rx.recv().unwrap_or_else(|_| {
                    Err(crate::error::Error::Runner {
                        msg: format!("the thread reading layer {layer} stopped"),
                    })
                })
            })?;
            debug_assert_eq!(lw.layer, layer);
            let last = layer + 1 == n;
            if layer < done {
                clock.time("read", || -> Result<()> {
                    restore_quantized_layer(ckpt, &store, layer, scheme, scale_dtype, &mut lw)?;
                    w16 = lw.linears.iter().map(|l| to_half_weight(l, half)).collect();
                    Ok(())
                })?;
                if !last {
                    let mut dev = clock.time("upload", || DeviceLayer::upload(b, &lw, &w16))?;
                    clock.time("forward", || {
                        run_layer_on(
                            &f,
                            &lw,
                            &mut dev,
                            &mut h,
                            &rows,
                            None,
                            true,
                            &mut Timer::new(),
                        )
                    })?;
                }
                progress.step(0, &format!("layer {layer} (resumed)"));
                continue;
            }
            let mut dev = clock.time("upload", || DeviceLayer::upload(b, &lw, &w16))?;
            drop(w16);
            let mut solver = GroupSolver::new(ckpt, layer, scheme, settings, scale_dtype, None);
            run_layer_on(
                &f,
                &lw,
                &mut dev,
                &mut h,
                &rows,
                Some(&mut solver),
                !last,
                clock,
            )?;
            // The finished layer is saved on a thread while the next one runs; at most one
            // save is in flight. A fault-injection point after the layer waits for it, so
            // "after-layer-N" still means "layer N is in the store".
            clock.time("write (resume store, wait)", || wait_save(pending.take()))?;
            let results = std::mem::take(&mut solver.results);
            let store = &store;
            let sink = sink.cloned();
            pending = Some(scope.spawn(move || {
                store.save_layer(layer, &results)?;
                send_layer(sink.as_ref(), layer, results)
            }));
            if std::env::var_os("HYQ_FAULT").is_some() {
                wait_save(pending.take())?;
            }
            crate::quant::gptq_pipeline::fault_point(&format!("after-layer-{layer}"));
            progress.step(0, &format!("layer {layer}"));
        }
        clock.time("write (resume store, wait)", || wait_save(pending.take()))
    })?;
    progress.end();
    Ok(CalibratedRun {
        store,
        record: calibration_record(&corpus, &set, settings, done),
    })
}
