//! Host side of the W4A16 / W8A16 linears (kernels/gptq.cu): which kernel runs for which
//! shape, how the K dimension is split, and the dequantize-then-cuBLAS path.
//!
//! - Decode (m <= `GEMV_MAX_ROWS`, sequential groups, shapes the kernels tile exactly), 16 rows
//!   of x per launch, one of two kernels (`GemvKernel`, chosen by `gemv_kernel`):
//!   `gptq_gemv_stream_w{4,8}_m{8,16}_u{4,8}_{f16,bf16}` (a ring of loads in flight per lane,
//!   grid sized to one wave, see `stream_quads_per_split`; its CUDA-core twin
//!   `gptq_gemv_ffma_w{4,8}_m{1,2,4}_u{4,8}_*` up to `STREAM_CUDA_CORE_MAX_ROWS` rows) for up to
//!   `STREAM_MAX_ROWS` rows,
//!   else `gptq_gemv_w{4,8}_m{8,16}_{f16,bf16}` (see `gemv_quads_per_split`). Both stream the
//!   packed weight once and add their split sums in a fixed order inside the same launch.
//! - Decode experiments, only through `set_gemv_kernel` (`GemvKernel::Stream`'s `tiled` and
//!   `reg_cap`): register-capped streaming kernels and ones that read a column-tiled copy of
//!   the packed weight (`tiled_qweight`, `gemm_gptq_tiled`), and `GemvKernel::Async` (a
//!   cp.async ring in shared memory, per-group scales), from the `gptq_experiments` module
//!   (compile.rs; docs/cuda.md, "Profiled" and "Asynchronous variant"). `HYQ_GEMV_KERNEL`
//!   forces one for whole runs.
//! - Everything else (prefill, act-order `g_idx`, odd shapes): `gptq_dequantize_w{4,8}` writes
//!   the 16-bit weight for a chunk of output columns into a scratch buffer and cuBLAS
//!   multiplies it. The dequantization reads the packed weight once and writes 4x (int4) its
//!   size; at prefill sizes that is small next to the GEMM, which then runs at cuBLAS speed
//!   (the fused tensor-core prefill kernel it replaces reached 53 TFLOP/s against cuBLAS's 485
//!   on 4096x4096x512, docs/cuda.md).

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use cudarc::cublas::sys as blas_sys;
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::compile::{self, KernelFile};
use super::{as_u32, drv, grid_1d, launch, CudaBackend, CudaBuf};
use crate::backend::{check_len, runner_err, GptqWeight, HalfKind};
use crate::error::{Error, Result};

/// Rows of x up to which the decode kernel runs (in launches of 16 rows); above, the weight is
/// dequantized for cuBLAS. One decode launch reads the packed weight once (0.5 / 1 byte per
/// weight for int4 / int8); dequantize + cuBLAS moves ~4.5 / 5 bytes per weight (read, write
/// 2, read 2 again). By bytes alone the crossing would be near 144 / 80 rows; 64 allows for
/// the 16-row launches being slower per byte than the 8-row ones. Not measured yet.
pub(crate) const GEMV_MAX_ROWS: usize = 64;

/// Threads per decode block (GV_WARPS warps in kernels/gptq.cu), quads of packed rows a warp
/// loads per step (GV_UNROLL) and output columns per block (GV_COLS).
const GV_THREADS: u32 = 256;
const GV_WARPS: usize = 8;
const GV_UNROLL: usize = 4;
const GV_COLS: usize = 32;

// ---- Decode kernel choice: the constants `decode_gemv_variant_sweep` (tests/backend_ops.rs)
// tunes. Its columns name the variant as `step`, or `s<unroll>k<k_warps>w<waves>`. Set from
// its run on the H200 (2026-11-30, docs/cuda.md, per 7B layer): s4k2w1 was the fastest
// streaming variant at every m from 1 to 8 for int4 (96.5 us at m = 1 against 104.6 for
// s8k1w1 and 116.5 for step) and within 4% of the best for int8; at m = 16 the step kernel
// wins (181 vs 220 us).
/// Rows of x per launch up to which the streaming kernel runs; above, the step kernel.
const STREAM_MAX_ROWS: usize = 8;
/// Ring slots (16-byte loads in flight) per lane of the streaming kernel: the `s<unroll>` of the
/// sweep. 4 or 8 for up to 8 rows; 9..16 rows always use 8.
const STREAM_UNROLL: usize = 4;
/// Warps along K per streaming block (each block is 4 warps across 128 columns times this):
/// the `k<k_warps>` of the sweep; 1 or 2.
const STREAM_K_WARPS: usize = 2;
/// Streaming blocks per resident block slot (occupancy x multiprocessors), which sets the K
/// split: the `w<waves>` of the sweep. 1 = one wave of long-lived warps.
const STREAM_WAVES: usize = 1;
/// Rows of x up to which the streaming kernel multiplies on CUDA cores (`gptq_gemv_ffma_*`,
/// at most 4) instead of the tensor cores: the sweep's `c...` columns against its `s...` ones.
/// 0 = always the tensor cores (fewer instructions per weight, see kernels/gptq.cu).
const STREAM_CUDA_CORE_MAX_ROWS: usize = 0;

/// Which decode kernel a launch uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemvKernel {
    /// `gptq_gemv_*`: 8 warps on 32 columns, loads issued one step at a time.
    Step,
    /// `gptq_gemv_stream_*`: `unroll` loads per lane always in flight (4 or 8), 4 warps across
    /// 128 columns times `k_warps` (1 or 2) along K, `waves` blocks per resident slot;
    /// `cuda_cores`: its CUDA-core twin `gptq_gemv_ffma_*` instead, for up to 4 rows (4 rows
    /// run with unroll 4).
    ///
    /// Experiments (tensor cores, up to 8 rows; `GemvKernel::experiment_suffix` lists what
    /// exists): `tiled` reads the column-tiled copy of the weight (`gemm_gptq_tiled`);
    /// `reg_cap` > 0 caps the registers so that `reg_cap` blocks of 256 threads fit per
    /// multiprocessor (`__launch_bounds__(256, reg_cap)`); `prefetch` > 0 (8, 16 or 32, ring 4,
    /// neither tiled nor capped) has each lane prefetch into L2 the quad that many ahead of
    /// the one it loads; `fold` (int4, tensor cores, ring 4 or 8, nothing else; up to 8 rows,
    /// where `fold_fits`, otherwise the unfolded kernel or the automatic choice runs) uses the
    /// folded math of `Async` on this kernel's loads. Production: false, 0, 0, false.
    Stream {
        unroll: usize,
        k_warps: usize,
        waves: usize,
        cuda_cores: bool,
        tiled: bool,
        reg_cap: u8,
        prefetch: u8,
        fold: bool,
    },
    /// An experiment (`gptq_experiments` module; measured slower than `Stream`, docs/cuda.md):
    /// `gptq_gemv_async_w4_m8_d<depth>[_fold]_*` (int4, up to 8 rows; other launches take
    /// the automatic choice): the streaming kernel's layout with its ring in shared memory
    /// (`depth` quads per lane in flight through cp.async: 4, 8 or 16), scales applied per
    /// group, and with `fold` the zeros too (only where the group is short enough for the
    /// folded sum to stay accurate, see `fold_fits`; otherwise the unfolded kernel runs).
    /// `k_warps` and `waves` as for `Stream`.
    Async {
        depth: usize,
        k_warps: usize,
        waves: usize,
        fold: bool,
    },
    /// An experiment (`gptq_experiments` module, sm_90 and later; elsewhere, and above 8 rows,
    /// the automatic choice runs): `gptq_gemv_bulk_w<bits>_m8_s<stages>_*`, the streaming
    /// kernel's warps and sums fed by the bulk copy engine (`cp.async.bulk`) through a ring of
    /// `stages` (2, 4 or 8) stages of 4 quads per K warp group in shared memory, filled by a
    /// producer warp. Bit-identical to `Stream` with the same `k_warps` at the same K split.
    /// `tiled`: reads the column-tiled copy of the weight (`gemm_gptq_tiled`), one copy per
    /// stage instead of one per 512-byte row piece.
    Bulk {
        stages: usize,
        k_warps: usize,
        waves: usize,
        tiled: bool,
    },
}

impl GemvKernel {
    /// The automatic choice for a launch of `rows` rows of x.
    // The tuning constants may sit at the ends of their ranges (STREAM_CUDA_CORE_MAX_ROWS = 0).
    #[allow(clippy::absurd_extreme_comparisons)]
    fn auto(rows: usize) -> Self {
        if rows <= STREAM_MAX_ROWS {
            GemvKernel::Stream {
                unroll: STREAM_UNROLL,
                k_warps: STREAM_K_WARPS,
                waves: STREAM_WAVES,
                cuda_cores: rows <= STREAM_CUDA_CORE_MAX_ROWS,
                tiled: false,
                reg_cap: 0,
                prefetch: 0,
                fold: false,
            }
        } else {
            GemvKernel::Step
        }
    }

    /// The sweep's column name: `step`, or `s<unroll>k<k_warps>w<waves>` (`c...` on CUDA
    /// cores), then `t` when tiled, `c<reg_cap>` when capped (`s4k2w1tc3`) and `p<prefetch>`
    /// with an L2 prefetch (`s4k2w1p16`).
    pub fn label(&self) -> String {
        match *self {
            GemvKernel::Step => "step".to_string(),
            GemvKernel::Stream {
                unroll,
                k_warps,
                waves,
                cuda_cores,
                tiled,
                reg_cap,
                prefetch,
                fold,
            } => {
                let mut label = format!(
                    "{}{unroll}k{k_warps}w{waves}",
                    if cuda_cores { 'c' } else { 's' }
                );
                if tiled {
                    label.push('t');
                }
                if reg_cap > 0 {
                    label += &format!("c{reg_cap}");
                }
                if prefetch > 0 {
                    label += &format!("p{prefetch}");
                }
                if fold {
                    label.push('f');
                }
                label
            }
            GemvKernel::Async {
                depth,
                k_warps,
                waves,
                fold,
            } => format!("a{depth}k{k_warps}w{waves}{}", if fold { "f" } else { "" }),
            GemvKernel::Bulk {
                stages,
                k_warps,
                waves,
                tiled,
            } => format!(
                "b{stages}k{k_warps}w{waves}{}",
                if tiled { "t" } else { "" }
            ),
        }
    }

    /// The kernel a label names (`label`'s inverse for the production variants and the
    /// prefetching, asynchronous and bulk-copy experiments: `step`, `s4k2w1`, `c4k1w1`,
    /// `s4k2w1p16`, `s4k2w1f`, `a8k2w1`, `a8k2w1f`, `b4k2w1`; the tiled and capped experiments are not
    /// parsed). For `HYQ_GEMV_KERNEL`.
    pub fn parse(label: &str) -> Result<Self> {
        let bad = || {
            Error::cuda(format!(
                "HYQ_GEMV_KERNEL={label}: not a decode kernel (step, s<unroll>k<k_warps>w<waves>[f], \
                 c<unroll>k<k_warps>w<waves>, s<unroll>k<k_warps>w<waves>p<prefetch>, \
                 a<depth>k<k_warps>w<waves>[f], b<stages>k<k_warps>w<waves>, e.g. s4k2w1, \
                 s4k2w1p16, a8k2w1f, b4k2w1)"
            ))
        };
        if label == "step" {
            return Ok(GemvKernel::Step);
        }
        let (head, rest) = label.split_at(label.len().min(1));
        let (rest, fold) = match rest.strip_suffix('f') {
            Some(r) if head == "a" || head == "s" => (r, true),
            _ => (rest, false),
        };
        let (first, rest) = rest.split_once('k').ok_or_else(bad)?;
        let (k_warps, rest) = rest.split_once('w').ok_or_else(bad)?;
        let (waves, prefetch) = match rest.split_once('p') {
            Some((w, p)) if head == "s" => (w, Some(p)),
            _ => (rest, None),
        };
        let num = |v: &str| v.parse::<usize>().map_err(|_| bad());
        let (first, k_warps, waves) = (num(first)?, num(k_warps)?, num(waves)?);
        let prefetch = match prefetch {
            Some(p) => u8::try_from(num(p)?).map_err(|_| bad())?,
            None => 0,
        };
        match head {
            "s" | "c" => Ok(GemvKernel::Stream {
                unroll: first,
                k_warps,
                waves,
                cuda_cores: head == "c",
                tiled: false,
                reg_cap: 0,
                prefetch,
                fold,
            }),
            "a" => Ok(GemvKernel::Async {
                depth: first,
                k_warps,
                waves,
                fold,
            }),
            "b" => Ok(GemvKernel::Bulk {
                stages: first,
                k_warps,
                waves,
                tiled: false,
            }),
            _ => Err(bad()),
        }
    }

    /// The same kernel without the folded math (`Stream`'s `fold` off; others unchanged).
    fn unfolded(mut self) -> Self {
        if let GemvKernel::Stream { fold, .. } = &mut self {
            *fold = false;
        }
        self
    }

    /// Whether the kernel reads the column-tiled copy of the weight (`gemm_gptq_tiled`).
    pub fn is_tiled(&self) -> bool {
        matches!(
            self,
            GemvKernel::Stream { tiled: true, .. } | GemvKernel::Bulk { tiled: true, .. }
        )
    }

    /// The kernel name suffix of an experimental streaming variant in the `gptq_experiments`
    /// module (`_tiled`, `_cap3`, `_tiled_cap4`, `_pf16`, ...; kernels/gptq.cu,
    /// GEMV_STREAM_EXPERIMENTS), `None` for a production variant, an error for a combination
    /// that is not instantiated. Instantiated (m = 8 tensor-core kernels only): ring 4 with a
    /// cap of 3 or 4 blocks, tiled or not, and tiled without a cap; ring 8 tiled without a cap;
    /// ring 4 with a prefetch of 8, 16 or 32 quads (not tiled, not capped); ring 4 or 8
    /// folded (nothing else).
    fn experiment_suffix(&self) -> Result<Option<String>> {
        let GemvKernel::Stream {
            unroll,
            cuda_cores,
            tiled,
            reg_cap,
            prefetch,
            fold,
            ..
        } = *self
        else {
            return Ok(None);
        };
        if !tiled && reg_cap == 0 && prefetch == 0 && !fold {
            return Ok(None);
        }
        let exists = !cuda_cores
            && match (unroll, prefetch, fold) {
                (4 | 8, 0, true) => !tiled && reg_cap == 0,
                (4, 0, false) => matches!(reg_cap, 0 | 3 | 4),
                (4, 8 | 16 | 32, false) => !tiled && reg_cap == 0,
                (8, 0, false) => tiled && reg_cap == 0,
                _ => false,
            };
        if !exists {
            return Err(Error::cuda(format!(
                "no decode experiment kernel for {} (there are: tensor cores, ring 4 tiled and/or \
                 capped at 3 or 4 blocks, ring 4 with a prefetch of 8, 16 or 32 quads, ring 8 \
                 tiled, ring 4 or 8 folded)",
                self.label()
            )));
        }
        if prefetch > 0 {
            return Ok(Some(format!("_pf{prefetch}")));
        }
        if fold {
            return Ok(Some("_fold".to_string()));
        }
        let mut suffix = String::new();
        if tiled {
            suffix += "_tiled";
        }
        if reg_cap > 0 {
            suffix += &format!("_cap{reg_cap}");
        }
        Ok(Some(suffix))
    }
}

/// Output columns per streaming block (GS_COLS in kernels/gptq.cu: 4 warps of 32 columns).
const GS_COLS: usize = 128;

/// The bulk-copy decode kernel's shared memory (kernels/gptq.cu, GB_*): the mbarriers, then
/// per K warp group a ring of stages of 4 quads (4 packed rows of 512 bytes each, and a
/// 384-byte slot of scale and zero rows per quad), then the x slice.
const GB_BARRIERS: usize = 256;
const GB_STAGE: usize = 4 * 4 * 512 + 4 * 384;

/// Dynamic shared memory a decode block may use (x slice, then the per-warp sums): under the
/// 48 KiB that needs no opt-in, with room for the kernel's static bytes.
const GV_SMEM_LIMIT: usize = 45 * 1024;

/// The largest 16-bit weight chunk the prefill path dequantizes at once.
const DEQUANT_SCRATCH_BYTES: usize = 64 << 20;

fn kind_name(half: HalfKind) -> &'static str {
    match half {
        HalfKind::F16 => "f16",
        HalfKind::BF16 => "bf16",
    }
}

/// The decode kernel's shared memory for `rows` rows of x and `qps` quads per split: the x
/// slice with its padded row pitch (as the kernel computes it), or the per-warp sums.
fn gemv_smem_bytes(rows: usize, mb: usize, qps: usize, kq: usize) -> usize {
    (rows * x_pitch(qps, kq) * 2).max(GV_WARPS * mb * GV_COLS * 4)
}

/// The x slice's row pitch in halves for `qps` quads of `kq` k (as both kernels compute it).
fn x_pitch(qps: usize, kq: usize) -> usize {
    (qps * kq).next_multiple_of(64) + kq
}

/// The streaming kernel's shared memory: the x slice, or the per-warp sums of `k_warps` warps.
fn stream_smem_bytes(rows: usize, mb: usize, qps: usize, kq: usize, k_warps: usize) -> usize {
    (rows * x_pitch(qps, kq) * 2).max(k_warps * mb * GS_COLS * 4)
}

/// The asynchronous decode kernel's shared memory (kernels/gptq.cu, `gptq_gemv_async`): two
/// rings of `depth` x threads x 16 bytes (weights; scales and zeros), then the x slice of
/// `rows` rows with the streaming kernel's row pitch. The per-warp sums reuse the rings.
fn async_smem_bytes(rows: usize, qps: usize, depth: usize, k_warps: usize) -> usize {
    2 * depth * GS_COLS * k_warps * 16 + rows * x_pitch(qps, 32) * 2
}

/// Whether the folded asynchronous kernel (zeros out of the loop) keeps its accuracy for
/// groups of `group_len`: it sums (bias + q) * x over a group in f32 and subtracts
/// (bias + z) * sum(x), which costs about bias * group_len * 2^-24 relative to the group's
/// sum of |x| (bias 1024 for f16, 128 for bf16). Allowed up to 2^17 (f16: g128, bf16:
/// g1024), an error under 1% of a half's rounding; longer groups run unfolded.
fn fold_fits(group_len: usize, half: HalfKind) -> bool {
    let bias = match half {
        HalfKind::F16 => 1024,
        HalfKind::BF16 => 128,
    };
    group_len * bias <= 1 << 17
}

/// One decode launch, planned: kernel (module and name), grid, threads per block, shared
/// memory, K slice, and whether it reads the column-tiled weight.
struct GemvPlan {
    file: KernelFile,
    name: String,
    tiled: bool,
    grid: (usize, usize),
    block: (u32, u32),
    smem: usize,
    qps: usize,
    /// Ticket counters the launch uses (one per column block).
    counters: usize,
}

impl CudaBackend {
    /// Whether `gptq_gemv_*` handles this weight: sequential groups, K a multiple of one quad
    /// of packed rows (32 k for int4, 16 for int8), groups of whole quads, N a multiple of the
    /// block's 32 columns, every tensor indexable with 32 bits, and the K splits within a
    /// grid's y dimension.
    fn gemv_fits(&self, w: &GptqWeight<Self>) -> bool {
        let kq = 4 * (32 / w.bits as usize);
        let (n, k) = (w.out_features, w.in_features);
        w.g_idx.is_none()
            && k > 0
            && k % kq == 0
            && w.group_len % kq == 0
            && n % GV_COLS == 0
            && (k / kq).div_ceil(GV_UNROLL) <= 65_535
            && (k / (32 / w.bits as usize)) * n <= u32::MAX as usize
            && w.groups * n <= u32::MAX as usize
    }

    /// Forces the decode kernel's K slice (quads of packed rows per block) for tuning runs;
    /// `None` restores the automatic choice.
    pub fn set_gemv_quads_per_split(&self, quads: Option<usize>) {
        self.gemv_quads_override
            .store(quads.unwrap_or(0), Ordering::Relaxed);
    }

    /// Forces the decode kernel for tuning runs; `None` restores the automatic choice
    /// (`GemvKernel::auto`). A `Stream` unroll of 4 with more than 8 rows runs with 8; the
    /// experimental variants (`tiled`, `reg_cap`) run up to 8 rows only.
    pub fn set_gemv_kernel(&self, kernel: Option<GemvKernel>) -> Result<()> {
        // (what, its size, whether that size exists, K warps, waves) of the forced kernel.
        let shape = match kernel {
            Some(GemvKernel::Stream {
                unroll,
                k_warps,
                waves,
                ..
            }) => Some((
                "streaming",
                "unroll",
                unroll,
                matches!(unroll, 4 | 8),
                k_warps,
                waves,
            )),
            Some(GemvKernel::Async {
                depth,
                k_warps,
                waves,
                ..
            }) => Some((
                "asynchronous",
                "depth",
                depth,
                matches!(depth, 4 | 8 | 16),
                k_warps,
                waves,
            )),
            Some(GemvKernel::Bulk {
                stages,
                k_warps,
                waves,
                ..
            }) => Some((
                "bulk-copy",
                "stages",
                stages,
                matches!(stages, 2 | 4 | 8),
                k_warps,
                waves,
            )),
            Some(GemvKernel::Step) | None => None,
        };
        if let Some((what, size_name, size, size_ok, k_warps, waves)) = shape {
            if !size_ok || !matches!(k_warps, 1 | 2) || waves == 0 {
                return Err(Error::cuda(format!(
                    "no {what} decode kernel with {size_name} {size}, {k_warps} K warps, {waves} waves"
                )));
            }
        }
        if let Some(k) = kernel {
            k.experiment_suffix()?;
        }
        *self
            .gemv_kernel_override
            .lock()
            .map_err(|_| Error::cuda("decode kernel override poisoned by an earlier panic"))? =
            kernel;
        Ok(())
    }

    /// The decode kernel for a launch of `rows` rows: the forced one, else `GemvKernel::auto`.
    fn gemv_kernel(&self, rows: usize) -> Result<GemvKernel> {
        let forced = *self
            .gemv_kernel_override
            .lock()
            .map_err(|_| Error::cuda("decode kernel override poisoned by an earlier panic"))?;
        Ok(forced.unwrap_or_else(|| GemvKernel::auto(rows)))
    }

    /// Blocks of `name` that fit on one multiprocessor with `smem` bytes of dynamic shared
    /// memory (asked once per kernel).
    fn gemv_blocks_per_sm(
        &self,
        f: &cudarc::driver::CudaFunction,
        name: &str,
        threads: u32,
        smem: usize,
    ) -> Result<usize> {
        self.gemv_cached(format!("{name}/{threads}"), || {
            // The driver answers for the current context; a failed query only costs the guess
            // of two blocks (what the register count of the m16 kernels allows).
            Ok(self
                .ctx
                .bind_to_thread()
                .and_then(|()| {
                    f.occupancy_max_active_blocks_per_multiprocessor(threads, smem, None)
                })
                .map_or(2, |b| b.max(1) as usize))
        })
    }

    /// `key`'s entry of the per-kernel launch facts cache (`gemv_occupancy`), computed by
    /// `compute` the first time (under the lock, so once).
    fn gemv_cached(&self, key: String, compute: impl FnOnce() -> Result<usize>) -> Result<usize> {
        let mut cache = self
            .gemv_occupancy
            .lock()
            .map_err(|_| Error::cuda("occupancy cache poisoned by an earlier panic"))?;
        if let Some(&v) = cache.get(&key) {
            return Ok(v);
        }
        let v = compute()?;
        cache.insert(key, v);
        Ok(v)
    }

    /// The dynamic shared memory `name` may use: the device's opt-in maximum per block (set
    /// on the function once, so launches above 48 KiB are allowed), less what the kernel
    /// declares statically.
    fn opt_in_smem(&self, f: &cudarc::driver::CudaFunction, name: &str) -> Result<usize> {
        use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
        self.gemv_cached(format!("smem/{name}"), || {
            let optin = drv(
                "max shared memory per block (opt-in)",
                self.ctx.attribute(
                    CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                ),
            )?;
            let fixed = drv(
                "kernel static shared memory",
                f.get_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES),
            )?;
            let limit = (optin - fixed).max(0);
            drv(
                "cuFuncSetAttribute (max dynamic shared memory)",
                f.set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    limit,
                ),
            )?;
            Ok(limit as usize)
        })
    }

    /// Quads of packed rows per K slice (one block's share of K). One step of 4 quads per warp
    /// (32 per block) is the unit. Larger slices (2 or 4 steps per warp) amortize the block's
    /// fixed work (staging x, summing warps and slices) when the grid still has two waves of
    /// blocks; smaller ones (fewer busy warps per block) when one step per warp would leave
    /// multiprocessors idle. Capped so the x slice fits in shared memory.
    fn gemv_quads_per_split(
        &self,
        f: &cudarc::driver::CudaFunction,
        name: &str,
        col_tiles: usize,
        quads: usize,
        (rows, mb, kq): (usize, usize, usize),
    ) -> Result<usize> {
        let mut max_qps = GV_UNROLL;
        while gemv_smem_bytes(rows, mb, 2 * max_qps, kq) <= GV_SMEM_LIMIT {
            max_qps *= 2;
        }
        let forced = self.gemv_quads_override.load(Ordering::Relaxed);
        if forced > 0 {
            return Ok(forced.next_multiple_of(GV_UNROLL).min(max_qps));
        }
        let step = GV_WARPS * GV_UNROLL;
        let per_sm =
            self.gemv_blocks_per_sm(f, name, GV_THREADS, gemv_smem_bytes(mb, mb, step, kq))?;
        let resident = per_sm * self.sm_count as usize;
        let blocks = |qps: usize| col_tiles * quads.div_ceil(qps);
        let mut qps = step;
        for steps_per_warp in [4, 2] {
            if blocks(step * steps_per_warp) >= 2 * resident {
                qps = step * steps_per_warp;
                break;
            }
        }
        while qps > GV_UNROLL && blocks(qps) < resident {
            qps /= 2;
        }
        Ok(qps.min(max_qps))
    }

    /// Quads of packed rows per K slice of the streaming kernel. The grid is `waves` times the
    /// blocks that can be resident at once (rounded down to whole column blocks' worth of
    /// splits), so that with one wave every multiprocessor holds its full share of warps, each
    /// with its ring of loads in flight, for the whole launch: one ramp-up per warp and few
    /// split sums. The splits are as even as whole quads allow (the kernel's last ring turn
    /// may be partial); the x slice must fit in shared memory and the splits in grid.y.
    fn stream_quads_per_split(
        &self,
        f: &cudarc::driver::CudaFunction,
        name: &str,
        col_blocks: usize,
        quads: usize,
        (smem, smem_limit): (&dyn Fn(usize) -> usize, usize),
        (threads, waves): (u32, usize),
    ) -> Result<usize> {
        let fits = |qps: usize| smem(qps) <= smem_limit;
        let mut max_qps = 1;
        while max_qps < quads && fits(2 * max_qps) {
            max_qps *= 2;
        }
        let min_qps = quads.div_ceil(65_535).max(1);
        let clamp = |qps: usize| qps.min(quads).clamp(min_qps, max_qps.max(min_qps));
        let forced = self.gemv_quads_override.load(Ordering::Relaxed);
        if forced > 0 {
            return Ok(clamp(forced));
        }
        // Registers bound the residency; the shared memory of a 64-quad slice stands in for
        // the final one.
        let resident = self.gemv_blocks_per_sm(f, name, threads, smem(64.min(max_qps)))?
            * self.sm_count as usize;
        let splits = (waves * resident / col_blocks).clamp(1, quads.max(1));
        Ok(clamp(quads.div_ceil(splits)))
    }

    /// The launch of `kernel` for `rows` <= 16 rows of `w`.
    fn gemv_plan(&self, w: &GptqWeight<Self>, rows: usize, kernel: GemvKernel) -> Result<GemvPlan> {
        let (n, k) = (w.out_features, w.in_features);
        let kq = 4 * (32 / w.bits as usize);
        let quads = k / kq;
        let mb = if rows <= 8 { 8 } else { 16 };
        let kind = kind_name(w.half);
        match kernel {
            // `auto` is never `Async`, so these fall back at most once.
            GemvKernel::Async { .. } if w.bits != 4 || rows > 8 => {
                self.gemv_plan(w, rows, GemvKernel::auto(rows))
            }
            GemvKernel::Async {
                depth,
                k_warps,
                waves,
                fold,
            } => {
                let fold = fold && fold_fits(w.group_len, w.half);
                let name = format!(
                    "gptq_gemv_async_w4_m8_d{depth}{}_{kind}",
                    if fold { "_fold" } else { "" }
                );
                let smem = |qps: usize| async_smem_bytes(rows, qps, depth, k_warps);
                let block = (GS_COLS as u32, k_warps as u32);
                match self.split_k_plan(
                    compile::GPTQ_EXPERIMENTS,
                    name,
                    &smem,
                    (&smem, None),
                    block,
                    false,
                    (n, quads, waves),
                )? {
                    Some(plan) => Ok(plan),
                    // The rings alone do not fit this device's shared memory.
                    None => self.gemv_plan(w, rows, GemvKernel::auto(rows)),
                }
            }
            GemvKernel::Stream { fold: true, .. } if rows > 8 => {
                self.gemv_plan(w, rows, GemvKernel::auto(rows))
            }
            GemvKernel::Stream { fold: true, .. }
                if w.bits != 4 || !fold_fits(w.group_len, w.half) =>
            {
                self.gemv_plan(w, rows, kernel.unfolded())
            }
            GemvKernel::Bulk { .. } if rows > 8 || self.cc.0 < 9 => {
                self.gemv_plan(w, rows, GemvKernel::auto(rows))
            }
            GemvKernel::Bulk {
                stages,
                k_warps,
                waves,
                tiled,
            } => {
                if tiled && n % GS_COLS != 0 {
                    return Err(Error::cuda(format!(
                        "decode experiment {}: the column-tiled weight needs out_features a \
                         multiple of {GS_COLS}, not {n}",
                        kernel.label()
                    )));
                }
                let name = format!(
                    "gptq_gemv_bulk_w{}_m8_s{stages}_{kind}{}",
                    w.bits,
                    if tiled { "_tiled" } else { "" }
                );
                let ring = GB_BARRIERS + k_warps * stages * GB_STAGE;
                let smem = |qps: usize| ring + rows * x_pitch(qps, kq) * 2;
                // The streaming kernel's K splits (the same x-slice limit), so that the two
                // agree bit for bit at a forced split; the ring comes on top.
                let split = |qps: usize| ring + stream_smem_bytes(rows, mb, qps, kq, k_warps);
                let block = ((32 * (4 * k_warps + 1)) as u32, 1);
                let limit = Some(ring + GV_SMEM_LIMIT);
                match self.split_k_plan(
                    compile::GPTQ_EXPERIMENTS,
                    name,
                    &smem,
                    (&split, limit),
                    block,
                    tiled,
                    (n, quads, waves),
                )? {
                    Some(plan) => Ok(plan),
                    // The ring does not fit this device's shared memory.
                    None => self.gemv_plan(w, rows, GemvKernel::auto(rows)),
                }
            }
            GemvKernel::Step => {
                let name = format!("gptq_gemv_w{}_m{mb}_{kind}", w.bits);
                let f = self.func(&compile::GPTQ, &name)?;
                let col_tiles = n / GV_COLS;
                let qps = self.gemv_quads_per_split(&f, &name, col_tiles, quads, (rows, mb, kq))?;
                Ok(GemvPlan {
                    file: compile::GPTQ,
                    tiled: false,
                    grid: (col_tiles, quads.div_ceil(qps)),
                    block: (GV_THREADS, 1),
                    smem: gemv_smem_bytes(rows, mb, qps.min(quads), kq),
                    qps,
                    counters: col_tiles,
                    name,
                })
            }
            GemvKernel::Stream {
                unroll,
                k_warps,
                waves,
                cuda_cores,
                tiled,
                ..
            } => {
                // Instantiated: tensor cores m8 u4/u8 and m16 u8; CUDA cores m1/m2 u4/u8, m4 u4;
                // the experiments (m8 only) in their own module.
                let (file, mb, name) = if let Some(suffix) = kernel.experiment_suffix()? {
                    if rows > 8 {
                        return Err(Error::cuda(format!(
                            "decode experiment {} runs up to 8 rows per launch, not {rows}",
                            kernel.label()
                        )));
                    }
                    if tiled && n % GS_COLS != 0 {
                        return Err(Error::cuda(format!(
                            "decode experiment {}: the column-tiled weight needs out_features a \
                             multiple of {GS_COLS}, not {n}",
                            kernel.label()
                        )));
                    }
                    let name = format!("gptq_gemv_stream_w{}_m8_u{unroll}_{kind}{suffix}", w.bits);
                    (compile::GPTQ_EXPERIMENTS, 8, name)
                } else if cuda_cores && rows <= 4 {
                    let mb = rows.next_power_of_two();
                    let unroll = if mb == 4 { 4 } else { unroll };
                    let name = format!("gptq_gemv_ffma_w{}_m{mb}_u{unroll}_{kind}", w.bits);
                    (compile::GPTQ, mb, name)
                } else {
                    let unroll = if mb == 16 { 8 } else { unroll };
                    let name = format!("gptq_gemv_stream_w{}_m{mb}_u{unroll}_{kind}", w.bits);
                    (compile::GPTQ, mb, name)
                };
                let smem = |qps: usize| stream_smem_bytes(rows, mb, qps, kq, k_warps);
                let block = (GS_COLS as u32, k_warps as u32);
                let limit = Some(GV_SMEM_LIMIT);
                let plan = self.split_k_plan(
                    file,
                    name,
                    &smem,
                    (&smem, limit),
                    block,
                    tiled,
                    (n, quads, waves),
                )?;
                // Under the 48 KiB every device has, so always Some.
                plan.ok_or_else(|| Error::cuda("decode kernel: no room for its shared memory"))
            }
        }
    }

    /// The launch of a decode kernel with the streaming kernel's grid (`Stream`, `Async`,
    /// `Bulk`): kernel `name` of `file` with `smem(qps)` bytes of dynamic shared memory for a
    /// K slice of qps quads and a block of `block` threads; the K split by
    /// `stream_quads_per_split` with `split` = (shared memory per K slice, limit; `None`: the
    /// device's opt-in maximum). `None` when one quad's worth does not fit the device.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn split_k_plan(
        &self,
        file: KernelFile,
        name: String,
        smem: &dyn Fn(usize) -> usize,
        split: (&dyn Fn(usize) -> usize, Option<usize>),
        block: (u32, u32),
        tiled: bool,
        (n, quads, waves): (usize, usize, usize),
    ) -> Result<Option<GemvPlan>> {
        let f = self.func(&file, &name)?;
        let limit = self.opt_in_smem(&f, &name)?;
        if smem(1) > limit {
            return Ok(None);
        }
        let col_blocks = n.div_ceil(GS_COLS);
        let qps = self.stream_quads_per_split(
            &f,
            &name,
            col_blocks,
            quads,
            (split.0, split.1.unwrap_or(limit)),
            (block.0 * block.1, waves),
        )?;
        Ok(Some(GemvPlan {
            file,
            tiled,
            grid: (col_blocks, quads.div_ceil(qps)),
            block,
            smem: smem(qps.min(quads)),
            qps,
            counters: col_blocks,
            name,
        }))
    }

    /// The decode launch `gemm_gptq` would make for `rows` <= 16 rows of `w` now (kernel,
    /// grid, block, K slice), for tuning output; `None` when `w` takes the dequantize path.
    pub fn describe_gemv(&self, w: &GptqWeight<Self>, rows: usize) -> Result<Option<String>> {
        if !self.gemv_fits(w) || rows == 0 || rows > 16 {
            return Ok(None);
        }
        let p = self.gemv_plan(w, rows, self.gemv_kernel(rows)?)?;
        Ok(Some(format!(
            "{} grid {}x{} block {}x{} qps {} smem {}",
            p.name, p.grid.0, p.grid.1, p.block.0, p.block.1, p.qps, p.smem
        )))
    }

    /// The decode launch for `rows` <= 16 rows of x (views into the caller's buffers); `tiled`:
    /// the column-tiled copy of `w.qweight`, which the tiled experiments read instead;
    /// `read_only`: the loads-only twin of the planned kernel (`gemm_gptq_read_only`).
    fn gptq_gemv(
        &self,
        x: &CudaView<'_, u16>,
        w: &GptqWeight<Self>,
        tiled: Option<&CudaBuf<i32>>,
        rows: usize,
        out: &mut CudaViewMut<'_, f32>,
        read_only: bool,
    ) -> Result<()> {
        let (n, k) = (w.out_features, w.in_features);
        let mut plan = self.gemv_plan(w, rows, self.gemv_kernel(rows)?)?;
        if read_only {
            let base = format!("gptq_gemv_stream_w{}_m8_u4_{}", w.bits, kind_name(w.half));
            if plan.file.name != compile::GPTQ.name || plan.name != base {
                return Err(Error::cuda(format!(
                    "gemm_gptq_read_only: {} has no loads-only twin (only {base}, the production \
                     ring-4 kernel for up to 8 rows)",
                    plan.name
                )));
            }
            plan.file = compile::GPTQ_EXPERIMENTS;
            plan.name = format!("{base}_readonly");
        }
        let qweight = match (plan.tiled, tiled) {
            (false, None) => &w.qweight,
            (true, Some(t)) => t,
            (true, None) => {
                return Err(Error::cuda(format!(
                    "{} reads the column-tiled weight: call gemm_gptq_tiled with the copy \
                     tiled_qweight makes",
                    plan.name
                )))
            }
            (false, Some(_)) => {
                return Err(Error::cuda(format!(
                    "gemm_gptq_tiled: the decode kernel {} does not read the column-tiled \
                     weight (force a tiled variant with set_gemv_kernel)",
                    plan.name
                )))
            }
        };
        let f = self.func(&plan.file, &plan.name)?;
        let splits = plan.grid.1;
        let mut part = if splits > 1 {
            Some(self.scratch::<f32>(splits * rows * n)?)
        } else {
            None
        };
        let mut guard = self.gemv_counters(plan.counters)?;
        let counters = guard
            .as_mut()
            .ok_or_else(|| Error::cuda("decode tile counters missing"))?;
        let cfg = LaunchConfig {
            grid_dim: (
                as_u32("column tiles", plan.grid.0)?,
                as_u32("K splits", splits)?,
                1,
            ),
            block_dim: (plan.block.0, plan.block.1, 1),
            shared_mem_bytes: as_u32("shared memory", plan.smem)?,
        };
        let s = &self.stream;
        let (xp, _gx) = x.device_ptr(s);
        let (qp, _gq) = qweight.slice.device_ptr(s);
        let (zp, _gz) = w.qzeros.slice.device_ptr(s);
        let (sp, _gs) = w.scales.slice.device_ptr(s);
        let (op, _go) = out.device_ptr_mut(s);
        let (pp, _gp) = match &mut part {
            Some(p) => {
                let (pp, g) = p.slice.device_ptr_mut(s);
                (pp, Some(g))
            }
            None => (0, None),
        };
        let (cp, _gc) = counters.slice.device_ptr_mut(s);
        let mut args = launch::RawArgs::default();
        args.ptr(xp)
            .ptr(qp)
            .ptr(zp)
            .ptr(sp)
            .ptr(op)
            .ptr(pp)
            .ptr(cp)
            .u32(as_u32("m", rows)?)
            .u32(as_u32("out_features", n)?)
            .u32(as_u32("in_features", k)?)
            .u32(as_u32("group_len", w.group_len)?)
            .u32(as_u32("quads per split", plan.qps)?);
        // SAFETY: matches gptq_gemv_w*_m*_* / gptq_gemv_stream_w*_m*_u*_* and their
        // experiments (7 pointers, 5 u32; the block shape and dynamic shared memory of `plan`,
        // at most the opt-in limit, 256 threads); `gemv_fits` checked the shapes the kernels
        // rely on (and `gemv_plan` N % 128 == 0 for the tiled ones, whose copy has as many ints
        // as `w.qweight`, checked by `gemm_gptq_tiled`); `part` holds splits x rows x n floats
        // (null with one split, which the kernels never touch); `counters` holds at least
        // `plan.counters` zeroed words (each launch leaves them zero again). Every decode
        // kernel calls `pdl_wait` before it reads x, part or counters or writes anything.
        unsafe { launch::launch(s, &f, cfg, &mut args, self.pdl) }
            .map_err(Self::launch_err(&plan.name))?;
        Ok(())
    }

    /// The per-column-tile tickets of the decode kernel's split-K sums: zeroed once, grown when
    /// a wider weight comes, left zero by every launch.
    /// Growing them bumps `gemv_counters_generation`: a recorded graph that used the old
    /// buffer is stale (`Backend::replay` refuses it).
    fn gemv_counters(&self, len: usize) -> Result<MutexGuard<'_, Option<CudaBuf<u32>>>> {
        let mut guard = self
            .gemv_counters
            .lock()
            .map_err(|_| Error::cuda("decode counters poisoned by an earlier panic"))?;
        if guard.as_ref().is_none_or(|c| c.len < len) {
            *guard = Some(self.alloc::<u32>(len.max(1024))?);
            self.gemv_counters_generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(guard)
    }

    /// The decode tickets any kernel may need for a weight of `n` outputs (one per column
    /// tile of the narrowest kernel).
    pub(crate) fn reserve_gemv_counters(&self, n: usize) -> Result<()> {
        self.gemv_counters(n.div_ceil(GV_COLS.min(GS_COLS)))
            .map(drop)
    }

    /// The column-tiled copy of `w.qweight` that the tiled decode experiments read
    /// (`gptq_tile_qweight`): `tiled[(t * rows + r) * 128 + c] = qweight[r * N + t * 128 + c]`
    /// for column tile t of 128, packed row r (rows = K / (32 / bits)), so the K slice of each
    /// 128-column decode block is one contiguous run. Needs N a multiple of 128. A layout
    /// experiment (docs/cuda.md, "Profiled"): `GptqWeight` keeps the GPTQ layout.
    pub fn tiled_qweight(&self, w: &GptqWeight<Self>) -> Result<CudaBuf<i32>> {
        let n = w.out_features;
        let rows = w.in_features / (32 / w.bits as usize);
        if n % GS_COLS != 0 {
            return Err(Error::cuda(format!(
                "tiled_qweight: the column-tiled weight needs out_features a multiple of \
                 {GS_COLS}, not {n}"
            )));
        }
        check_len("tiled_qweight", "qweight", w.qweight.len, rows * n)?;
        let len = rows * n;
        let mut tiled = self.scratch::<i32>(len)?;
        if len == 0 {
            return Ok(tiled);
        }
        let name = "gptq_tile_qweight";
        let f = self.func(&compile::GPTQ_EXPERIMENTS, name)?;
        let (rows_u, n_u) = (as_u32("packed rows", rows)?, as_u32("out_features", n)?);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&w.qweight.slice)
            .arg(&mut tiled.slice)
            .arg(&rows_u)
            .arg(&n_u);
        // SAFETY: matches gptq_tile_qweight; both buffers hold rows x n ints (n a multiple of
        // 128, so every thread's 16 bytes are in range and aligned); one thread per 4 ints of
        // the copy writes all of it.
        unsafe { b.launch(grid_1d((len / 4) as u64, 256)?) }.map_err(Self::launch_err(name))?;
        Ok(tiled)
    }

    /// `gemm_gptq` for 1 to 8 rows through `tiled`, the column-tiled copy of `w.qweight`
    /// (`tiled_qweight`), with the decode kernel forced by `set_gemv_kernel`, which must be a
    /// tiled streaming variant (`GemvKernel::is_tiled`). For the layout experiment's tests and
    /// sweep only.
    pub fn gemm_gptq_tiled(
        &self,
        x: &CudaBuf<u16>,
        w: &GptqWeight<Self>,
        tiled: &CudaBuf<i32>,
        m: usize,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        check_len("gemm_gptq_tiled", "tiled", tiled.len, w.qweight.len)?;
        self.gemv_only("gemm_gptq_tiled", x, w, Some(tiled), m, out, false)
    }

    /// A benchmark, never a product: the automatic decode launch for 1 to 8 rows of `w`, with
    /// the production streaming kernel swapped for its loads-only twin
    /// (`gptq_gemv_stream_*_readonly`: same grid, lanes, loads, x staging and sums, an XOR
    /// instead of the math), so its time is what the loads alone cost. `out` gets meaningless
    /// values. An error when the automatic choice is not the ring-4 streaming kernel.
    pub fn gemm_gptq_read_only(
        &self,
        x: &CudaBuf<u16>,
        w: &GptqWeight<Self>,
        m: usize,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        self.gemv_only("gemm_gptq_read_only", x, w, None, m, out, true)
    }

    /// A decode launch for 1 to 8 rows, with no fallback to the dequantize path: the entry of
    /// the experiments' calls (`gemm_gptq_tiled`, `gemm_gptq_read_only`, named `op` in errors).
    #[allow(clippy::too_many_arguments)]
    fn gemv_only(
        &self,
        op: &str,
        x: &CudaBuf<u16>,
        w: &GptqWeight<Self>,
        tiled: Option<&CudaBuf<i32>>,
        m: usize,
        out: &mut CudaBuf<f32>,
        read_only: bool,
    ) -> Result<()> {
        let (n, k) = (w.out_features, w.in_features);
        check_len(op, "x", x.len, m * k)?;
        check_len(op, "out", out.len, m * n)?;
        if !(1..=8).contains(&m) || !self.gemv_fits(w) {
            return Err(Error::cuda(format!(
                "{op}: {m} rows of a {n} x {k} int{} weight take no decode kernel \
                 (1 to 8 rows and the shapes of the streaming kernel)",
                w.bits
            )));
        }
        let xv = x.slice.slice(0..m * k);
        let mut ov = out.slice.slice_mut(0..m * n);
        self.gptq_gemv(&xv, w, tiled, m, &mut ov, read_only)
    }

    /// `gptq_dequantize_w*`: W[n0..n0 + n_cols] of `w` as 16-bit rows into `out`.
    fn gptq_dequantize_cols(
        &self,
        w: &GptqWeight<Self>,
        out: &mut CudaBuf<u16>,
        n0: usize,
        n_cols: usize,
    ) -> Result<()> {
        let k = w.in_features;
        if n_cols == 0 || k == 0 {
            return Ok(());
        }
        let name = format!("gptq_dequantize_w{}", w.bits);
        let f = self.func(&compile::GPTQ, &name)?;
        let (n_u, k_u, gl, kind, n0_u, nc_u) = (
            as_u32("out_features", w.out_features)?,
            as_u32("in_features", k)?,
            as_u32("group_len", w.group_len)?,
            w.half.code(),
            as_u32("first column", n0)?,
            as_u32("columns", n_cols)?,
        );
        let null: u64 = 0;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&w.qweight.slice)
            .arg(&w.qzeros.slice)
            .arg(&w.scales.slice);
        match &w.g_idx {
            Some(g) => b.arg(&g.slice),
            None => b.arg(&null),
        };
        b.arg(&mut out.slice)
            .arg(&n_u)
            .arg(&k_u)
            .arg(&gl)
            .arg(&kind)
            .arg(&n0_u)
            .arg(&nc_u);
        // SAFETY: matches gptq_dequantize_w*; `out` holds n_cols x k halves (checked by the
        // callers); one thread per (column, 32 k).
        unsafe { b.launch(grid_1d((n_cols * k.div_ceil(32)) as u64, 256)?) }
            .map_err(Self::launch_err(&name))?;
        Ok(())
    }

    /// The weight a GPTQ loader reconstructs, all columns.
    pub(crate) fn gptq_dequantize_all(
        &self,
        w: &GptqWeight<Self>,
        out: &mut CudaBuf<u16>,
    ) -> Result<()> {
        self.gptq_dequantize_cols(w, out, 0, w.out_features)
    }

    /// `out[m, n] = x[m, k] . W^T`: the decode kernel for small m, else dequantize + cuBLAS.
    pub(crate) fn gptq_matmul(
        &self,
        x: &CudaBuf<u16>,
        w: &GptqWeight<Self>,
        m: usize,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        let (n, k) = (w.out_features, w.in_features);
        if k == 0 {
            let mut view = out.slice.slice_mut(0..m * n);
            return drv("zeroing out", self.stream.memset_zeros(&mut view));
        }
        if m <= GEMV_MAX_ROWS && self.gemv_fits(w) {
            for r0 in (0..m).step_by(16) {
                let rows = (m - r0).min(16);
                let xv = x.slice.slice(r0 * k..(r0 + rows) * k);
                let mut ov = out.slice.slice_mut(r0 * n..(r0 + rows) * n);
                self.gptq_gemv(&xv, w, None, rows, &mut ov, false)?;
            }
            return Ok(());
        }
        // Column chunks of the 16-bit weight (multiples of 128 columns when there are that
        // many), each dequantized into the same scratch and multiplied into its columns of out.
        let mut chunk = (DEQUANT_SCRATCH_BYTES / (2 * k)).clamp(1, n);
        if chunk >= 128 && chunk < n {
            chunk -= chunk % 128;
        }
        let mut scratch = self.scratch::<u16>(chunk * k)?;
        for n0 in (0..n).step_by(chunk) {
            let nc = chunk.min(n - n0);
            self.gptq_dequantize_cols(w, &mut scratch, n0, nc)?;
            let (xp, _gx) = x.slice.device_ptr(&self.stream);
            let (wp, _gw) = scratch.slice.device_ptr(&self.stream);
            let (op, _go) = out.slice.device_ptr_mut(&self.stream);
            // SAFETY: x holds m x k halves, the scratch nc x k, out m x n floats; the columns
            // n0..n0 + nc of out's rows start n0 floats in, rows n apart.
            unsafe {
                self.gemm_ptrs(
                    xp,
                    wp,
                    op + (n0 * std::mem::size_of::<f32>()) as u64,
                    w.half,
                    (m, nc, k),
                    n,
                )?
            };
        }
        Ok(())
    }

    /// Row-major `out[m, ..n]` (row pitch `ldc` floats) = `x[m, k] . w[n, k]^T` with cuBLAS
    /// (16-bit inputs, f32 accumulation and output).
    ///
    /// # Safety
    /// The pointers must be live device buffers on this backend's stream holding m x k and
    /// n x k values of `half` and m rows of `ldc` >= n floats.
    pub(crate) unsafe fn gemm_ptrs(
        &self,
        xp: u64,
        wp: u64,
        op: u64,
        half: HalfKind,
        (m, n, k): (usize, usize, usize),
        ldc: usize,
    ) -> Result<()> {
        let int = |what: &str, v: usize| {
            i32::try_from(v).map_err(|_| runner_err(format!("gemm: {what} = {v} is too large")))
        };
        let (mi, ni, ki, ldci) = (int("m", m)?, int("n", n)?, int("k", k)?, int("ldc", ldc)?);
        let dt = match half {
            HalfKind::F16 => blas_sys::cudaDataType::CUDA_R_16F,
            HalfKind::BF16 => blas_sys::cudaDataType::CUDA_R_16BF,
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        // Row-major out[m, n] = x[m, k] . w[n, k]^T is column-major out^T[n, m] =
        // (w as column-major [k, n])^T . (x as column-major [k, m]).
        // SAFETY: the caller's pointers (see above); types match `dt` and CUDA_R_32F; the
        // handle is bound to our stream.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                ni,
                mi,
                ki,
                &alpha as *const f32 as *const _,
                wp as *const _,
                dt,
                ki,
                xp as *const _,
                dt,
                ki,
                &beta as *const f32 as *const _,
                op as *mut _,
                blas_sys::cudaDataType::CUDA_R_32F,
                ldci,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| Error::cuda(format!("cublasGemmEx ({m}x{n}x{k}): {e:?}")))
    }
}
