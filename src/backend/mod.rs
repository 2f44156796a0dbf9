//! Compute backends: one `Backend` trait, two implementations (DESIGN.md).
//!
//! - `cpu`: plain Rust + rayon, always available; the reference the GPU is checked against.
//! - `cuda`: cudarc with the driver, NVRTC and cuBLAS loaded at run time. The binary builds and
//!   runs without CUDA; `Device::select` probes for a usable driver + GPU and falls back to the
//!   CPU (with one line saying why) unless CUDA was asked for explicitly.
//!
//! Buffers belong to the backend (`Backend::Buf<T>`: a `Vec` on the CPU, device memory on the
//! GPU). Ops validate shapes on the host and return `Error::Runner`/`Error::Cuda` instead of
//! panicking. Activations are f32; GEMM inputs are 16-bit (`HalfKind`: f16 or bf16 bit
//! patterns in `u16`), products accumulate in f32.

pub mod cpu;
pub mod cuda;

use std::fmt;
use std::str::FromStr;

use half::{bf16, f16};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::quant::gptq::{GptqConfig, GptqOutcome, Hessian, SweepPlan};
use crate::quant::{QuantScheme, QuantizedLinear, Weight};

pub use cpu::CpuBackend;
pub use cuda::CudaBackend;

/// Element types a backend buffer can hold.
pub trait Elem:
    Copy
    + Default
    + PartialEq
    + Send
    + Sync
    + fmt::Debug
    + 'static
    + cudarc::driver::DeviceRepr
    + cudarc::driver::ValidAsZeroBits
{
}
impl Elem for f32 {}
impl Elem for f64 {}
impl Elem for u32 {}
impl Elem for i32 {}
impl Elem for u16 {}
impl Elem for u8 {}

/// Which 16-bit float a `u16` buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HalfKind {
    F16,
    BF16,
}

impl HalfKind {
    /// The half type weights of `dtype` are computed in (f32 checkpoints use f16, like their
    /// GPTQ scales).
    pub fn for_dtype(dtype: DType) -> Self {
        match dtype {
            DType::BF16 => HalfKind::BF16,
            _ => HalfKind::F16,
        }
    }

    pub fn to_f32(self, bits: u16) -> f32 {
        match self {
            HalfKind::F16 => f16::from_bits(bits).to_f32(),
            HalfKind::BF16 => bf16::from_bits(bits).to_f32(),
        }
    }

    /// Round to nearest, ties to even.
    pub fn from_f32(self, x: f32) -> u16 {
        match self {
            HalfKind::F16 => f16::from_f32(x).to_bits(),
            HalfKind::BF16 => bf16::from_f32(x).to_bits(),
        }
    }

    /// `x` rounded to this type and back.
    pub fn round(self, x: f32) -> f32 {
        self.to_f32(self.from_f32(x))
    }

    /// The code kernels take (0 = f16, 1 = bf16).
    pub fn code(self) -> u32 {
        match self {
            HalfKind::F16 => 0,
            HalfKind::BF16 => 1,
        }
    }
}

/// Shape of grouped-query attention over a slot-based KV cache: `k_cache`/`v_cache` are
/// [slots, max_len, kv_heads * head_dim] in the model's 16-bit type (`HalfKind`, passed to
/// `kv_append`/`attention` beside the caches, as vLLM and transformers keep the cache in the
/// model dtype); row r of a step belongs to slot `slots[r]` at position `positions[r]` and
/// attends to positions 0..=positions[r] of its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Positions per slot in the cache.
    pub max_len: usize,
}

impl AttnShape {
    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.kv_heads == 0 || self.heads % self.kv_heads != 0 {
            return Err(runner_err(format!(
                "attention: {} query heads are not a multiple of {} kv heads",
                self.heads, self.kv_heads
            )));
        }
        if self.head_dim == 0 || self.head_dim % 32 != 0 || self.head_dim > 256 {
            return Err(runner_err(format!(
                "attention: head_dim {} is not a multiple of 32 up to 256",
                self.head_dim
            )));
        }
        if self.max_len == 0 {
            return Err(runner_err("attention: KV cache has max_len 0"));
        }
        Ok(())
    }
}

/// A GPTQ v1 linear held on a backend in its packed form (see `export::gptq_v1` and
/// docs/formats.md): `qweight` int32 [K/pf, N], `qzeros` int32 [G, N/pf] (zero - 1),
/// `scales` [G, N] as `half` bit patterns, `g_idx` [K] only when it is not k / group_len.
pub struct GptqWeight<B: Backend + ?Sized> {
    pub bits: u32,
    pub in_features: usize,
    pub out_features: usize,
    pub groups: usize,
    pub group_len: usize,
    /// Dtype of the scales, and of the dequantized weight the kernels compute with.
    pub half: HalfKind,
    pub qweight: B::Buf<i32>,
    pub qzeros: B::Buf<i32>,
    pub scales: B::Buf<u16>,
    /// `None` when g_idx[k] == k / group_len (sequential groups, the fast path).
    pub g_idx: Option<B::Buf<i32>>,
}

/// The host side of a `GptqWeight`: the tensors as the checkpoint stores them.
pub struct GptqHost<'a> {
    pub name: &'a str,
    pub scheme: QuantScheme,
    pub in_features: usize,
    pub out_features: usize,
    pub qweight: &'a [i32],
    pub qzeros: &'a [i32],
    /// Bit patterns of `half`.
    pub scales: &'a [u16],
    pub half: HalfKind,
    pub g_idx: &'a [i32],
}

impl<B: Backend> GptqWeight<B> {
    /// Checks shapes and copies the packed tensors to `backend`.
    pub fn upload(backend: &B, h: &GptqHost<'_>) -> Result<Self> {
        let (k, n) = (h.in_features, h.out_features);
        h.scheme.check_shape(h.name, n, k)?;
        let pf = h.scheme.pack_factor();
        let group_len = h.scheme.group_len(k);
        let groups = h.scheme.num_groups(k);
        let want = |what: &str, got: usize, want: usize| -> Result<()> {
            if got == want {
                Ok(())
            } else {
                Err(Error::tensor(
                    h.name,
                    format!("{what} has {got} elements, expected {want}"),
                ))
            }
        };
        want("qweight", h.qweight.len(), k / pf * n)?;
        want("qzeros", h.qzeros.len(), groups * n / pf)?;
        want("scales", h.scales.len(), groups * n)?;
        want("g_idx", h.g_idx.len(), k)?;
        if let Some(bad) = h.g_idx.iter().find(|&&g| g < 0 || g as usize >= groups) {
            return Err(Error::tensor(
                h.name,
                format!("g_idx holds {bad}, outside 0..{groups}"),
            ));
        }
        let sequential = group_len % pf == 0
            && h.g_idx
                .iter()
                .enumerate()
                .all(|(i, &g)| g as usize == i / group_len);
        Ok(GptqWeight {
            bits: h.scheme.bits as u32,
            in_features: k,
            out_features: n,
            groups,
            group_len,
            half: h.half,
            qweight: backend.upload(h.qweight)?,
            qzeros: backend.upload(h.qzeros)?,
            scales: backend.upload(h.scales)?,
            g_idx: if sequential {
                None
            } else {
                Some(backend.upload(h.g_idx)?)
            },
        })
    }

    /// Bytes the packed tensors occupy on the backend.
    pub fn bytes(&self) -> usize {
        let pf = 32 / self.bits as usize;
        let (k, n) = (self.in_features, self.out_features);
        k / pf * n * 4
            + self.groups * n / pf * 4
            + self.groups * n * 2
            + self.g_idx.as_ref().map_or(0, |_| k * 4)
    }
}

/// The upper-triangular U with (P H Pᵀ + λI)⁻¹ = UᵀU that the GPTQ sweep uses (P: the sweep
/// order), [dim, dim] row-major f32, with the damping that worked (see
/// `gptq::with_damping_retries`).
pub struct InverseFactor<B: Backend + ?Sized> {
    pub u: B::Buf<f32>,
    /// The relative damping of the successful factorization.
    pub damp_used: f64,
    /// Failed factorizations before it.
    pub retries: u32,
}

/// One linear for `Backend::gptq_linear`.
pub struct LinearJob<'a, B: Backend + ?Sized> {
    /// The original weight on the host (f32, HF layout), with its name and scale dtype.
    pub weight: &'a Weight<'a>,
    /// The same weight on the backend in `half` (what the forward reads).
    pub w16: &'a B::Buf<u16>,
    pub half: HalfKind,
    /// `w16` holds `weight` exactly (a 16-bit checkpoint): the backend may work from it and
    /// skip uploading the f32 copy, and does not scan it for NaN/Inf again (the caller has:
    /// the layer loop reads weights `load_layer` checked).
    pub exact16: bool,
    /// Hessian of the linear's inputs, [in, in].
    pub h: &'a B::Buf<f32>,
    /// `BackendHessian::version` of `h`, when it comes from one that nothing else modifies:
    /// jobs with the same version (q/k/v, gate/up) may share one inverse factor. `None`: no
    /// reuse.
    pub h_version: Option<u64>,
    pub nsamples: usize,
    pub cfg: &'a GptqConfig,
}

/// What `Backend::gptq_linear` returns: the GPTQ-v1 tensors to write, the dequantized weight
/// on the backend for the rest of the forward, and the manifest's statistics.
pub struct SolvedLinear<B: Backend + ?Sized> {
    pub packed: crate::export::gptq_v1::PackedGptq,
    /// `half(dequantize(packed))`, [out, in] on the backend: the weight a loader reconstructs.
    pub deq16: B::Buf<u16>,
    /// Weight-space error of the dequantized weight against the original.
    pub error: crate::quant::stats::ErrorStats,
    /// Relative squared output errors on the calibration inputs (`gptq::output_errors`): of
    /// the GPTQ weight and of RTN's on the same scheme.
    pub output_err_sq: f64,
    pub rtn_output_err_sq: f64,
    pub damp_used: f64,
    pub retries: u32,
    pub loss: f64,
    /// Parts of the wall time the backend measured (manifest phases).
    pub phases: Vec<(&'static str, f64)>,
}

/// `Backend::gptq_linear` made of the other ops with the host in between (the CPU backend's
/// way, and the reference the GPU's device-resident version is tested against): solve, pack,
/// the loader's dequantization, RTN for comparison, output and weight errors.
pub fn gptq_linear_on_host<B: Backend + ?Sized>(
    b: &B,
    job: &LinearJob<'_, B>,
) -> Result<SolvedLinear<B>> {
    use rayon::prelude::*;
    let w = job.weight;
    let timed = |phases: &mut Vec<(&'static str, f64)>, name, t: std::time::Instant| {
        phases.push((name, t.elapsed().as_secs_f64()));
    };
    let mut phases = Vec::new();
    let t = std::time::Instant::now();
    let outcome = b.gptq_quantize(w, job.h, job.nsamples, job.cfg)?;
    let parts: f64 = outcome.phases.iter().map(|p| p.1).sum();
    phases.extend(outcome.phases.iter().copied());
    phases.push(("solve", (t.elapsed().as_secs_f64() - parts).max(0.0)));
    let t = std::time::Instant::now();
    let packed = crate::export::gptq_v1::pack(&outcome.linear, w.scale_dtype);
    timed(&mut phases, "pack", t);
    let t = std::time::Instant::now();
    let deq = crate::quant::gptq_pipeline::dequantize_packed(
        w.name,
        &job.cfg.scheme,
        &packed,
        w.scale_dtype,
        w.out_features,
        w.in_features,
    )?;
    let deq16 = b.upload(
        &deq.par_iter()
            .map(|&v| job.half.from_f32(v))
            .collect::<Vec<u16>>(),
    )?;
    timed(&mut phases, "dequantize", t);
    let t = std::time::Instant::now();
    let rtn = b.quantize_rtn(&job.cfg.scheme, w)?.dequantize();
    timed(&mut phases, "stats: rtn", t);
    let t = std::time::Instant::now();
    let errs = b.gptq_output_errors(w.data, &[&deq, &rtn], job.h, w.in_features)?;
    timed(&mut phases, "stats: output error", t);
    let t = std::time::Instant::now();
    let error = crate::quant::stats::ErrorStats::between(w.data, &deq);
    timed(&mut phases, "stats: weight error", t);
    Ok(SolvedLinear {
        packed,
        deq16,
        error,
        output_err_sq: errs[0],
        rtn_output_err_sq: errs[1],
        damp_used: outcome.damp_used,
        retries: outcome.retries,
        loss: outcome.loss,
        phases,
    })
}

/// A GPTQ Hessian H = 2/n Σ xxᵀ held on a backend, f32 [dim, dim] (the CPU pipeline keeps its
/// own f64 `gptq::Hessian`; see docs/gpu-gptq.md for why f32 is enough on the GPU).
pub struct BackendHessian<B: Backend> {
    pub dim: usize,
    pub h: B::Buf<f32>,
    /// Rows accumulated so far.
    pub nsamples: usize,
    /// Content version: unique over the process, renewed by every `add`/`add_half` (the
    /// only changes the layer loop makes). Jobs passing it as `LinearJob::h_version` let the
    /// backend reuse one factorization for the linears that share this Hessian.
    pub version: u64,
}

/// Source of `BackendHessian::version`.
static HESSIAN_VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_hessian_version() -> u64 {
    HESSIAN_VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl<B: Backend> BackendHessian<B> {
    pub fn new(backend: &B, dim: usize) -> Result<Self> {
        Ok(BackendHessian {
            dim,
            h: backend.zeros(dim * dim)?,
            nsamples: 0,
            version: next_hessian_version(),
        })
    }

    /// Adds the rows of `x` ([rows, dim]).
    pub fn add(&mut self, backend: &B, x: &B::Buf<f32>, rows: usize) -> Result<()> {
        backend.hessian_add(x, rows, &mut self.h, self.dim, self.nsamples)?;
        self.nsamples += rows;
        self.version = next_hessian_version();
        Ok(())
    }

    /// Adds the rows of the 16-bit `x` ([rows, dim] in `half`).
    pub fn add_half(
        &mut self,
        backend: &B,
        x: &B::Buf<u16>,
        half: HalfKind,
        rows: usize,
    ) -> Result<()> {
        backend.hessian_add_half(x, half, rows, &mut self.h, self.dim, self.nsamples)?;
        self.nsamples += rows;
        self.version = next_hessian_version();
        Ok(())
    }

    /// The f64 host Hessian with the same values.
    pub fn to_host(&self, backend: &B) -> Result<Hessian> {
        Ok(Hessian::from_f32(
            self.dim,
            &backend.download(&self.h)?,
            self.nsamples,
        ))
    }
}

/// Memory a backend has allocated, for the VRAM report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Bytes held in our buffers now.
    pub allocated_bytes: u64,
    /// High-water mark of `allocated_bytes`.
    pub peak_allocated_bytes: u64,
    /// Device memory in use now minus at backend creation (cuMemGetInfo), GPU only.
    pub device_used_delta: Option<u64>,
    /// Largest such delta seen at any allocation, GPU only.
    pub device_peak_delta: Option<u64>,
}

/// The ops the runner and the quantizer need. Every op has a CPU and a CUDA implementation;
/// tests/backend_ops.rs runs one body per op on both and compares with a host reference.
/// Arithmetic of `attention_prefill`'s two products (scores and P·V).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefillMath {
    /// f32 throughout (the CPU always does this).
    F32,
    /// TF32 tensor cores on the GPU: inputs rounded to 10-bit mantissas, f32 accumulation
    /// (relative error ~1e-3, finer than the 16-bit inputs of the linears around it); the
    /// calibration forward's choice.
    Tf32,
}

pub trait Backend: Send + Sync {
    type Buf<T: Elem>: Send + Sync;
    /// Recorded work (`record`), replayed by `replay`: a CUDA graph; `()` on the CPU.
    type Graph;

    /// "cpu", or "cuda:0 (NVIDIA H200, sm_90)".
    fn name(&self) -> String;
    fn upload<T: Elem>(&self, host: &[T]) -> Result<Self::Buf<T>>;
    fn zeros<T: Elem>(&self, len: usize) -> Result<Self::Buf<T>>;
    fn download<T: Elem>(&self, buf: &Self::Buf<T>) -> Result<Vec<T>>;
    /// Copies `host` into `dst` (the same length): a step's inputs into buffers that stay put.
    fn write<T: Elem>(&self, dst: &mut Self::Buf<T>, host: &[T]) -> Result<()>;
    fn len_of<T: Elem>(&self, buf: &Self::Buf<T>) -> usize;
    /// Waits for queued work (a no-op on the CPU).
    fn synchronize(&self) -> Result<()>;

    /// Records the work `f` queues instead of running it, for `replay`: every launch with
    /// the same buffers and arguments, so what changes between replays must be in buffers
    /// (written before each replay). `Ok(None)` (and nothing ran) where the backend records
    /// nothing: the CPU.
    fn record(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<Self::Graph>>;

    /// Queues the recorded work again; an error (and nothing queued) when a buffer the
    /// recording used behind the scenes has been reallocated since: record again.
    fn replay(&self, graph: &Self::Graph) -> Result<()>;

    /// Sizes what `gemm_gptq` keeps between calls for a GPTQ weight with `out_features`
    /// outputs (the GPU's decode tickets, otherwise grown on demand), before a step is
    /// recorded, so that replays never see it reallocated. Nothing to do on the CPU.
    fn reserve_for_gptq(&self, _out_features: usize) -> Result<()> {
        Ok(())
    }
    fn memory(&self) -> MemStats;

    /// `out = x * w / sqrt(mean(x^2) + eps)` over each row of length `w.len()` (also used per
    /// head for HunYuan's QK-norm, with a head_dim-long `w`).
    fn rms_norm(
        &self,
        x: &Self::Buf<f32>,
        w: &Self::Buf<f32>,
        eps: f32,
        out: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// NeoX rotate-half RoPE in place: `x` is [rows, heads * head_dim], row r at
    /// `positions[r]`; `inv_freq` [head_dim / 2] (from `runner::forward::Rope`, so HunYuan's
    /// dynamic-alpha base is just another table).
    fn rope(
        &self,
        x: &mut Self::Buf<f32>,
        positions: &Self::Buf<u32>,
        inv_freq: &Self::Buf<f32>,
        head_dim: usize,
    ) -> Result<()>;

    /// `out = silu(gate) * up`, elementwise.
    fn silu_mul(
        &self,
        gate: &Self::Buf<f32>,
        up: &Self::Buf<f32>,
        out: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// `out[r, j] = silu(gu[r, j]) * gu[r, inter + j]`: `silu_mul` over the output of a fused
    /// gate|up linear (`gu` [rows, 2 * inter], `out` [rows, inter]); same arithmetic as
    /// `silu_mul`.
    fn silu_mul_fused(
        &self,
        gu: &Self::Buf<f32>,
        inter: usize,
        out: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// `out[r] = table[ids[r]]` as f32; `table` is [vocab, hidden] of `half`. Ids must be
    /// below vocab (the GPU writes NaN rows for others, the CPU returns an error).
    fn embedding(
        &self,
        table: &Self::Buf<u16>,
        half: HalfKind,
        hidden: usize,
        ids: &Self::Buf<u32>,
        out: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// Index of the largest value of each row of length `cols` (first one on ties, as
    /// torch.argmax; NaNs are never chosen) and, in `margin`, that value minus the largest
    /// of the others: `runner::generate::argmax_with_margin` per row (the same index; the same
    /// margin up to the sign of a zero margin, which the GPU's tree merge may pick from
    /// another of several equal ±0 runners-up); greedy decoding's pick and its top-1 margin
    /// without downloading the logits.
    fn argmax(
        &self,
        x: &Self::Buf<f32>,
        cols: usize,
        out: &mut Self::Buf<u32>,
        margin: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// f32 to 16-bit, round to nearest even.
    fn to_half(&self, x: &Self::Buf<f32>, half: HalfKind, out: &mut Self::Buf<u16>) -> Result<()>;

    /// 16-bit to f32 (exact).
    fn widen_half(
        &self,
        x: &Self::Buf<u16>,
        half: HalfKind,
        out: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// `out[m, n] = x[m, k] . w[n, k]^T` with 16-bit inputs and f32 accumulation and output
    /// (cuBLAS on the GPU).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        x: &Self::Buf<u16>,
        w: &Self::Buf<u16>,
        half: HalfKind,
        m: usize,
        n: usize,
        k: usize,
        out: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// `out[m, N] = x[m, K] . W^T` with W the GPTQ weight dequantized in registers
    /// (`w.half`-rounded `scale * (q - zero)`), f32 accumulation. `x` is in `w.half`.
    fn gemm_gptq(
        &self,
        x: &Self::Buf<u16>,
        w: &GptqWeight<Self>,
        m: usize,
        out: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// The weight a GPTQ loader reconstructs, [N, K] in `w.half` (the reference the fused
    /// kernels are checked against, and the act-order slow path).
    fn dequantize_gptq(&self, w: &GptqWeight<Self>, out: &mut Self::Buf<u16>) -> Result<()>;

    /// Writes the rows of `k`/`v` ([rows, kv_width], f32) into the caches at (slot, position),
    /// rounded to `half` (nearest, ties to even: `HalfKind::from_f32`, the `to_half` op).
    #[allow(clippy::too_many_arguments)]
    fn kv_append(
        &self,
        k: &Self::Buf<f32>,
        v: &Self::Buf<f32>,
        slots: &Self::Buf<u32>,
        positions: &Self::Buf<u32>,
        shape: &AttnShape,
        half: HalfKind,
        k_cache: &mut Self::Buf<u16>,
        v_cache: &mut Self::Buf<u16>,
    ) -> Result<()>;

    /// Causal softmax attention of `q` ([rows, q_width]) over the `half` cache, scale
    /// 1/sqrt(head_dim), GQA; keys and values are widened to f32 as they are read, everything
    /// else is f32. The GPU runs one fused kernel with an online softmax (no score matrix in
    /// global memory).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Self::Buf<f32>,
        k_cache: &Self::Buf<u16>,
        v_cache: &Self::Buf<u16>,
        half: HalfKind,
        slots: &Self::Buf<u32>,
        positions: &Self::Buf<u32>,
        shape: &AttnShape,
        out: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// Causal softmax attention of whole sequences with no cache (the calibration forward):
    /// `q` [samples·seqlen, q_width], `k`/`v` [samples·seqlen, kv_width]; row t of sample s
    /// attends to rows 0..=t of s; scale 1/sqrt(head_dim), GQA (`shape.max_len` unused). The
    /// GPU runs cuBLAS batched SGEMMs (scores, then P·V) around a causal softmax kernel.
    #[allow(clippy::too_many_arguments)]
    fn attention_prefill(
        &self,
        q: &Self::Buf<f32>,
        k: &Self::Buf<f32>,
        v: &Self::Buf<f32>,
        samples: usize,
        seqlen: usize,
        shape: &AttnShape,
        math: PrefillMath,
        out: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// `x += y`, elementwise.
    fn add(&self, x: &mut Self::Buf<f32>, y: &Self::Buf<f32>) -> Result<()>;

    /// `x[r, j] += bias[j]` for every row of `x` ([rows, bias.len()]).
    fn add_bias(&self, x: &mut Self::Buf<f32>, bias: &Self::Buf<f32>) -> Result<()>;

    /// `out[r] = x[rows[r]]`, rows of length `width`.
    fn gather_rows(
        &self,
        x: &Self::Buf<f32>,
        width: usize,
        rows: &Self::Buf<u32>,
        out: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// `dst[r, j] = src[r, col0 + j]`: columns `col0..col0 + dst_cols` of `src`
    /// ([rows, src_cols] row-major) into the dense `dst` ([rows, dst_cols], dst_cols =
    /// `dst.len() / rows`); splits the output of a fused linear (q|k|v) into its parts.
    fn split_cols(
        &self,
        src: &Self::Buf<f32>,
        rows: usize,
        src_cols: usize,
        col0: usize,
        dst: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// `x += y` (when `y` is given), then `out = half(x * w / sqrt(mean(x^2) + eps))` over
    /// each row of length `w.len()`: `add`, `rms_norm` and `to_half` in one op (the decoder's
    /// residual add and the next linear's 16-bit input). Same arithmetic as the three ops.
    #[allow(clippy::too_many_arguments)]
    fn add_rms_norm_half(
        &self,
        x: &mut Self::Buf<f32>,
        y: Option<&Self::Buf<f32>>,
        w: &Self::Buf<f32>,
        eps: f32,
        half: HalfKind,
        out: &mut Self::Buf<u16>,
    ) -> Result<()>;

    /// `out = half(silu(gu[r, j]) * gu[r, inter + j])`: `silu_mul_fused` and `to_half` in one
    /// op (the down projection's 16-bit input). Same arithmetic as the two ops.
    fn silu_mul_fused_half(
        &self,
        gu: &Self::Buf<f32>,
        inter: usize,
        half: HalfKind,
        out: &mut Self::Buf<u16>,
    ) -> Result<()>;

    /// The attention inputs from a fused q|k|v output `qkv` ([rows, q_width + 2 kv_width]):
    /// q ([rows, q_width]), k and v ([rows, kv_width]) split out, RoPE (`rope`, row r at
    /// `positions[r]`) applied to q and k, then, with `qk_norm` = (q weight, k weight), each
    /// head of q and k RMS-normed (`rms_norm` with a head_dim-long weight: HunYuan's QK-norm,
    /// after RoPE). `split_cols` x3, `rope` x2 and `rms_norm` x2 in one op, same arithmetic.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn qkv_rope_norm(
        &self,
        qkv: &Self::Buf<f32>,
        positions: &Self::Buf<u32>,
        inv_freq: &Self::Buf<f32>,
        shape: &AttnShape,
        qk_norm: Option<(&Self::Buf<f32>, &Self::Buf<f32>)>,
        eps: f32,
        q: &mut Self::Buf<f32>,
        k: &mut Self::Buf<f32>,
        v: &mut Self::Buf<f32>,
    ) -> Result<()>;

    /// `h ← h·n/(n+m) + 2/(n+m)·XᵀX` for the m = `rows` rows of `x` ([rows, dim]), with
    /// n = `nsamples` rows accumulated before: the running average of gptq.rs
    /// `Hessian::add_batch`. `h` is [dim, dim] f32, exactly symmetric (cuBLAS SSYRK on the
    /// GPU, mirrored; the CPU sums in f64 and stores f32).
    fn hessian_add(
        &self,
        x: &Self::Buf<f32>,
        rows: usize,
        h: &mut Self::Buf<f32>,
        dim: usize,
        nsamples: usize,
    ) -> Result<()>;

    /// `hessian_add` with 16-bit `x` (`half`), products accumulated in f32: what the GPTQ
    /// reference does with an fp16 model's activations. Tensor cores on the GPU
    /// (`cublasGemmEx`, then mirrored so H is exactly symmetric); the CPU widens `x` and runs
    /// `hessian_add`.
    #[allow(clippy::too_many_arguments)]
    fn hessian_add_half(
        &self,
        x: &Self::Buf<u16>,
        half: HalfKind,
        rows: usize,
        h: &mut Self::Buf<f32>,
        dim: usize,
        nsamples: usize,
    ) -> Result<()>;

    /// The GPTQ inverse factor of the Hessian `h` ([dim, dim] f32) in `plan`'s sweep order,
    /// damped by `damp` · mean(diag H) and retried with 10× the damping when the Cholesky
    /// fails, exactly as gptq.rs (f64 Cholesky and triangular inverse on both backends:
    /// cuSOLVER potrf + trtri on the GPU). `name` is the tensor errors name.
    fn gptq_inverse_factor(
        &self,
        h: &Self::Buf<f32>,
        dim: usize,
        plan: &SweepPlan,
        damp: f64,
        name: &str,
    ) -> Result<InverseFactor<Self>>;

    /// GPTQ of one linear (host weight in, the same `QuantizedLinear` as gptq.rs out) against
    /// the Hessian `h` of its inputs ([in, in] f32, `nsamples` rows). The GPU sweeps each
    /// 128-column block with a row-parallel kernel and applies the lazy trailing update with
    /// cuBLAS; levels can differ from the CPU's where a rounding tie flips.
    fn gptq_quantize(
        &self,
        w: &Weight<'_>,
        h: &Self::Buf<f32>,
        nsamples: usize,
        cfg: &GptqConfig,
    ) -> Result<GptqOutcome>;

    /// `gptq::output_errors`: for each candidate C (host, [n, dim] like `w`),
    /// tr((W-C) H (W-C)ᵀ) / tr(W H Wᵀ) on the Hessian `h` ([dim, dim] f32), the relative
    /// squared output error on the calibration inputs. Products in f32 (cuBLAS SGEMM on the
    /// GPU), row sums in f64.
    fn gptq_output_errors(
        &self,
        w: &[f32],
        candidates: &[&[f32]],
        h: &Self::Buf<f32>,
        dim: usize,
    ) -> Result<Vec<f64>>;

    /// Round-to-nearest quantization of one linear by `quant::rtn`'s rules (host weight in,
    /// levels and group parameters out). Byte-identical on every backend.
    fn quantize_rtn(&self, scheme: &QuantScheme, w: &Weight<'_>) -> Result<QuantizedLinear>;

    /// Everything the calibrated layer loop needs for one linear (`LinearJob` ->
    /// `SolvedLinear`): GPTQ solve, GPTQ-v1 packing, the loader's dequantized weight on the
    /// backend, RTN and the output/weight errors. The default goes through the host
    /// (`gptq_linear_on_host`); the GPU keeps the weight on the device and brings back only
    /// the packed tensors.
    fn gptq_linear(&self, job: &LinearJob<'_, Self>) -> Result<SolvedLinear<Self>> {
        gptq_linear_on_host(self, job)
    }
}

pub(crate) fn runner_err(msg: impl Into<String>) -> Error {
    Error::Runner { msg: msg.into() }
}

/// `Err` unless `got == want`; shared by both backends so they fail alike.
pub(crate) fn check_len(op: &str, what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(runner_err(format!(
            "{op}: {what} has {got} elements, expected {want}"
        )))
    }
}

/// Rows of a [rows, cols] buffer of `len` elements.
pub(crate) fn rows_of(op: &str, what: &str, len: usize, cols: usize) -> Result<usize> {
    if cols == 0 || len % cols != 0 {
        return Err(runner_err(format!(
            "{op}: {what} has {len} elements, not a multiple of {cols}"
        )));
    }
    Ok(len / cols)
}

/// Checks `split_cols`' shapes; returns dst_cols (0 when `rows` is 0).
pub(crate) fn check_split_cols(
    src_len: usize,
    rows: usize,
    src_cols: usize,
    col0: usize,
    dst_len: usize,
) -> Result<usize> {
    check_len("split_cols", "src", src_len, rows * src_cols)?;
    if rows == 0 {
        return check_len("split_cols", "dst", dst_len, 0).map(|_| 0);
    }
    let dst_cols = rows_of("split_cols", "dst", dst_len, rows)?;
    if col0 + dst_cols > src_cols {
        return Err(runner_err(format!(
            "split_cols: columns {col0}..{} of a {src_cols}-column source",
            col0 + dst_cols
        )));
    }
    Ok(dst_cols)
}

/// Checks `silu_mul_fused`'s shapes; returns the rows.
pub(crate) fn check_silu_mul_fused(gu_len: usize, inter: usize, out_len: usize) -> Result<usize> {
    if inter == 0 {
        return Err(runner_err("silu_mul_fused: inter is 0"));
    }
    let rows = rows_of("silu_mul_fused", "gu", gu_len, 2 * inter)?;
    check_len("silu_mul_fused", "out", out_len, rows * inter)?;
    Ok(rows)
}

/// Checks `add_rms_norm_half`'s shapes; returns the rows.
pub(crate) fn check_add_rms_norm_half(
    x_len: usize,
    y_len: Option<usize>,
    w_len: usize,
    out_len: usize,
) -> Result<usize> {
    let rows = rows_of("add_rms_norm_half", "x", x_len, w_len)?;
    if let Some(y_len) = y_len {
        check_len("add_rms_norm_half", "y", y_len, x_len)?;
    }
    check_len("add_rms_norm_half", "out", out_len, x_len)?;
    Ok(rows)
}

/// Checks `qkv_rope_norm`'s shapes; returns the rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_qkv_rope_norm(
    qkv_len: usize,
    rows: usize,
    inv_freq_len: usize,
    shape: &AttnShape,
    norm_lens: Option<(usize, usize)>,
    q_len: usize,
    k_len: usize,
    v_len: usize,
) -> Result<usize> {
    const OP: &str = "qkv_rope_norm";
    let hd = shape.head_dim;
    if hd == 0 || hd % 2 != 0 || hd > 256 {
        return Err(runner_err(format!(
            "{OP}: head_dim {hd} is not even and at most 256"
        )));
    }
    let (qw, kvw) = (shape.q_width(), shape.kv_width());
    check_len(OP, "qkv", qkv_len, rows * (qw + 2 * kvw))?;
    check_len(OP, "inv_freq", inv_freq_len, hd / 2)?;
    check_len(OP, "q", q_len, rows * qw)?;
    check_len(OP, "k", k_len, rows * kvw)?;
    check_len(OP, "v", v_len, rows * kvw)?;
    if let Some((qn, kn)) = norm_lens {
        check_len(OP, "q norm weight", qn, hd)?;
        check_len(OP, "k norm weight", kn, hd)?;
    }
    Ok(rows)
}

/// `--device auto|cpu|cuda`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA when a driver and a GPU are usable, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda),
            other => Err(Error::flag(
                "--device",
                format!("{other:?} is not a device; expected auto, cpu or cuda"),
            )),
        }
    }
}

/// The backend a command runs on.
pub enum Device {
    Cpu(CpuBackend),
    Cuda(Box<CudaBackend>),
}

/// A chosen device and, when `auto` fell back to the CPU, the one line that says why.
pub struct Selection {
    pub device: Device,
    pub note: Option<String>,
}

impl Device {
    /// `Cuda` fails with `Error::Cuda` when no usable GPU is found; `Auto` never fails.
    pub fn select(choice: DeviceChoice) -> Result<Selection> {
        match choice {
            DeviceChoice::Cpu => Ok(Selection {
                device: Device::Cpu(CpuBackend::new()),
                note: None,
            }),
            DeviceChoice::Cuda => Ok(Selection {
                device: Device::Cuda(Box::new(CudaBackend::new(&cuda::CudaOptions::default())?)),
                note: None,
            }),
            DeviceChoice::Auto => Ok(Device::auto()),
        }
    }

    /// CUDA if a driver and GPU are usable, else the CPU with a note saying why.
    pub fn auto() -> Selection {
        match CudaBackend::new(&cuda::CudaOptions::default()) {
            Ok(b) => Selection {
                device: Device::Cuda(Box::new(b)),
                note: None,
            },
            Err(e) => Selection {
                device: Device::Cpu(CpuBackend::new()),
                note: Some(format!("using the CPU backend: {e}")),
            },
        }
    }

    pub fn name(&self) -> String {
        match self {
            Device::Cpu(b) => b.name(),
            Device::Cuda(b) => b.name(),
        }
    }

    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_flag_parses() {
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert_eq!("cuda".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda);
        let err = "tpu".parse::<DeviceChoice>().unwrap_err();
        assert!(err.to_string().contains("--device"), "{err}");
    }

    #[test]
    fn half_kinds_round_trip() {
        for kind in [HalfKind::F16, HalfKind::BF16] {
            for x in [0.0f32, 1.0, -2.5, 65504.0, 1e-3] {
                let r = kind.round(x);
                assert_eq!(kind.to_f32(kind.from_f32(r)), r);
            }
        }
        assert_eq!(HalfKind::BF16.from_f32(1.0), 0x3f80);
        assert_eq!(HalfKind::F16.from_f32(1.0), 0x3c00);
    }
}
