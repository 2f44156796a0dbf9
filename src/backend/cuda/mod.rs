//! The CUDA backend: one context and stream on one device, cuBLAS for 16-bit GEMM, our own
//! kernels (kernels/*.cu, compiled by NVRTC at first use, see `compile`) for everything else.
//! Every device buffer goes through `CudaBuf`, which counts the bytes we hold and their
//! high-water mark; cuMemGetInfo deltas are sampled at each allocation too.

pub mod compile;
mod gptq_linear;
pub use gptq_linear::GemvKernel;
mod gptq_solve;
mod launch;
pub mod probe;
mod staging;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaModule, CudaSlice, CudaStream, DevicePtr,
    DevicePtrMut, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::backend::{
    check_add_rms_norm_half, check_len, check_qkv_rope_norm, check_silu_mul_fused,
    check_split_cols, rows_of, runner_err, AttnShape, Backend, Elem, GptqWeight, HalfKind,
    InverseFactor, LinearJob, MemStats, SolvedLinear,
};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::quant::gptq::{GptqConfig, GptqOutcome, SweepPlan};
use crate::quant::rtn::Rtn;
use crate::quant::{QuantMethod, QuantScheme, QuantizedLinear, Weight};
use compile::KernelFile;
use probe::no_panic;

/// Threads per attention block (ATT_WARPS x 32 in kernels/attention.cu).
const ATT_THREADS: u32 = 16 * 32;

/// How to open the CUDA backend.
#[derive(Clone, Debug)]
pub struct CudaOptions {
    /// Device ordinal.
    pub ordinal: usize,
    /// Where compiled kernels are cached; `None` = `compile::default_cache_dir()`.
    pub kernel_cache: Option<PathBuf>,
    /// Queue work on a stream of the backend's own instead of the context's legacy default
    /// stream, which CUDA cannot record graphs on (`Backend::record`). Default: on, unless
    /// the environment sets `HYQ_CUDA_GRAPHS=0`.
    pub own_stream: bool,
    /// Launch the decode GEMVs as programmatic dependent launches (src/backend/cuda/launch.rs)
    /// on devices that have them (compute capability 9.0 and later; ignored below), so that
    /// each starts loading its weights while the small kernel before it runs. Default: on,
    /// unless the environment sets `HYQ_PDL=0`.
    pub pdl: bool,
    /// Launch the small kernels of a decode step (norms, QKV split with RoPE, KV append,
    /// attention, conversions, SwiGLU) that way too, so that a chain of them, and the GEMV
    /// after it, start early. Verified but measured no faster on the H200 (docs/cuda.md), so
    /// off unless the environment sets `HYQ_PDL=all`.
    pub pdl_small: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            ordinal: 0,
            kernel_cache: None,
            own_stream: graphs_asked(),
            pdl: std::env::var_os("HYQ_PDL").is_none_or(|v| v != "0"),
            pdl_small: std::env::var_os("HYQ_PDL").is_some_and(|v| v == "all"),
        }
    }
}

/// Decode steps recorded as CUDA graphs and replayed (docs/cuda.md), unless the environment
/// sets `HYQ_CUDA_GRAPHS=0` (for A/B timing; the backend then keeps the legacy stream).
pub fn graphs_asked() -> bool {
    std::env::var_os("HYQ_CUDA_GRAPHS").is_none_or(|v| v != "0")
}

/// `HYQ_GEMV_KERNEL=<label>` forces one decode kernel for every launch (A/B timing of whole
/// runs; `GemvKernel::parse` lists the labels). Unset or empty: the automatic choice.
fn env_gemv_kernel() -> Result<Option<GemvKernel>> {
    match std::env::var("HYQ_GEMV_KERNEL") {
        Ok(v) if !v.is_empty() => GemvKernel::parse(&v).map(Some),
        _ => Ok(None),
    }
}

/// A step recorded on the backend's stream (`Backend::record`), with the generation of the
/// decode tickets it uses.
pub struct RecordedGraph {
    graph: CudaGraph,
    generation: u64,
}

/// Bytes held in `CudaBuf`s and the device's free memory, for `MemStats`.
#[derive(Debug)]
struct MemTracker {
    current: AtomicU64,
    peak: AtomicU64,
    free_at_start: u64,
    min_free: AtomicU64,
}

impl MemTracker {
    fn alloc(&self, bytes: u64, free_now: Option<u64>) {
        let now = self.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
        if let Some(f) = free_now {
            self.min_free.fetch_min(f, Ordering::Relaxed);
        }
    }

    fn free(&self, bytes: u64) {
        self.current.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Device memory owned by the CUDA backend. Zero-length buffers hold one element (CUDA
/// cannot allocate zero bytes) but report length 0.
pub struct CudaBuf<T: Elem> {
    slice: CudaSlice<T>,
    len: usize,
    tracker: Arc<MemTracker>,
}

impl<T: Elem> CudaBuf<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn bytes(&self) -> u64 {
        (self.len.max(1) * std::mem::size_of::<T>()) as u64
    }
}

impl<T: Elem> Drop for CudaBuf<T> {
    fn drop(&mut self) {
        self.tracker.free(self.bytes());
    }
}

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// `stream` is the backend's own (`CudaOptions::own_stream`), not the legacy default.
    own_stream: bool,
    /// Decode GEMVs go out as programmatic dependent launches (`CudaOptions::pdl` on a
    /// device of compute capability 9.0 or later).
    pdl: bool,
    /// So do the decode step's small kernels (`CudaOptions::pdl_small`, same condition).
    pdl_small: bool,
    blas: CudaBlas,
    cc: (i32, i32),
    sm_count: u32,
    device_name: String,
    total_mem: u64,
    cache_dir: Option<PathBuf>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    tracker: Arc<MemTracker>,
    /// cuSOLVER, opened at the first GPTQ solve (only GPTQ needs libcusolver).
    solver: Mutex<Option<Arc<cudarc::cusolver::DnHandle>>>,
    /// Pinned buffers for large copies, allocated at the first one.
    staging: Mutex<Option<staging::Staging>>,
    /// The last GPTQ inverse factor, for the linears sharing its Hessian.
    #[allow(clippy::type_complexity)]
    factor_cache: Mutex<Option<(gptq_solve::FactorKey, Arc<InverseFactor<CudaBackend>>)>>,
    /// Tickets of the GPTQ decode kernel's split-K sums (see gptq_linear.rs).
    gemv_counters: Mutex<Option<CudaBuf<u32>>>,
    /// How often `gemv_counters` was (re)allocated: recorded graphs hold its address.
    gemv_counters_generation: AtomicU64,
    /// Blocks per multiprocessor of each GPTQ decode kernel.
    gemv_occupancy: Mutex<HashMap<String, usize>>,
    /// Quads of packed rows per K split forced for tuning (0: automatic).
    gemv_quads_override: AtomicUsize,
    /// Decode kernel forced for tuning (None: automatic).
    gemv_kernel_override: Mutex<Option<GemvKernel>>,
}

fn drv<T>(what: &str, r: std::result::Result<T, cudarc::driver::DriverError>) -> Result<T> {
    r.map_err(|e| Error::cuda(format!("{what}: {e}")))
}

fn grid_1d(n: u64, block: u32) -> Result<LaunchConfig> {
    let blocks = n.div_ceil(block as u64);
    if blocks > i32::MAX as u64 {
        return Err(Error::cuda(format!(
            "{n} elements are too many for one launch"
        )));
    }
    Ok(LaunchConfig {
        grid_dim: (blocks.max(1) as u32, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn as_u32(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| runner_err(format!("{what} = {v} does not fit in 32 bits")))
}

impl CudaBackend {
    /// Opens device `opts.ordinal`. Fails with `Error::Cuda` (never panics) when the driver,
    /// NVRTC or cuBLAS cannot be loaded or there is no such GPU.
    pub fn new(opts: &CudaOptions) -> Result<Self> {
        let count = probe::device_count()?;
        if count == 0 {
            return Err(Error::cuda(
                "the NVIDIA driver is loaded but reports no CUDA device",
            ));
        }
        if opts.ordinal >= count {
            return Err(Error::cuda(format!(
                "device {} asked for, but only {count} CUDA device(s) are visible",
                opts.ordinal
            )));
        }
        no_panic("opening the CUDA device", || {
            let ctx = drv("cuCtx (primary context)", CudaContext::new(opts.ordinal))?;
            // SAFETY: every buffer of this backend lives on its one stream, so cudarc's
            // cross-stream event bookkeeping (an event record/wait per kernel argument) buys
            // nothing; turned off before the first allocation.
            unsafe { ctx.disable_event_tracking() };
            let cc = drv("compute capability", ctx.compute_capability())?;
            let device_name = drv("device name", ctx.name())?;
            let sm_count = drv(
                "multiprocessor count",
                ctx.attribute(
                    cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                ),
            )?
            .max(1) as u32;
            // Memory an earlier backend on this device freed (the previous model of an eval)
            // stays reserved in the stream-ordered allocator's pool, invisible to
            // cuMemGetInfo: hand it back first, so this backend's baseline and peaks are its
            // own.
            drv("synchronize", ctx.synchronize())?;
            // SAFETY: plain driver calls on the current context's device; a failure only
            // leaves the pool as it was.
            unsafe {
                use cudarc::driver::sys;
                let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
                if sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
                    == sys::CUresult::CUDA_SUCCESS
                {
                    let _ = sys::cuMemPoolTrimTo(pool, 0);
                }
            }
            let (free, total) = drv("cuMemGetInfo", ctx.mem_get_info())?;
            let stream = if opts.own_stream {
                drv("cuStreamCreate", ctx.new_stream())?
            } else {
                ctx.default_stream()
            };
            let blas = CudaBlas::new(stream.clone())
                .map_err(|e| Error::cuda(format!("cublasCreate: {e:?}")))?;
            // NVRTC must answer before any kernel is needed, so a broken toolkit shows here.
            compile::nvrtc_version()?;
            Ok(CudaBackend {
                ctx,
                stream,
                own_stream: opts.own_stream,
                pdl: opts.pdl && cc.0 >= 9,
                pdl_small: opts.pdl_small && cc.0 >= 9,
                blas,
                cc,
                sm_count,
                device_name,
                total_mem: total as u64,
                cache_dir: opts
                    .kernel_cache
                    .clone()
                    .or_else(compile::default_cache_dir),
                modules: Mutex::new(HashMap::new()),
                tracker: Arc::new(MemTracker {
                    current: AtomicU64::new(0),
                    peak: AtomicU64::new(0),
                    free_at_start: free as u64,
                    min_free: AtomicU64::new(free as u64),
                }),
                solver: Mutex::new(None),
                staging: Mutex::new(None),
                factor_cache: Mutex::new(None),
                gemv_counters: Mutex::new(None),
                gemv_counters_generation: AtomicU64::new(0),
                gemv_occupancy: Mutex::new(HashMap::new()),
                gemv_quads_override: AtomicUsize::new(0),
                gemv_kernel_override: Mutex::new(env_gemv_kernel()?),
            })
        })
    }

    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }

    /// Whether decode GEMVs go out as programmatic dependent launches (`CudaOptions::pdl`
    /// and a device of compute capability 9.0 or later).
    pub fn pdl(&self) -> bool {
        self.pdl
    }

    /// Whether the decode step's small kernels go out that way too (`CudaOptions::pdl_small`).
    pub fn pdl_small(&self) -> bool {
        self.pdl_small
    }

    /// The device address of `b`, for `launch::RawArgs` (the context tracks no events, so
    /// there is nothing to record when the address is used).
    fn dptr<T: Elem>(&self, b: &CudaBuf<T>) -> u64 {
        b.slice.device_ptr(&self.stream).0
    }

    /// Launches one of the decode step's small kernels (each calls `pdl_launch_dependents` and
    /// `pdl_wait` first, kernels/common.cuh), as a programmatic dependent launch when
    /// `pdl_small`.
    ///
    /// # Safety
    /// As `launch::launch`.
    unsafe fn launch_small(
        &self,
        f: &cudarc::driver::CudaFunction,
        cfg: LaunchConfig,
        args: &mut launch::RawArgs,
        name: &str,
    ) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe { launch::launch(&self.stream, f, cfg, args, self.pdl_small) }
            .map_err(Self::launch_err(name))
    }

    pub fn total_memory(&self) -> u64 {
        self.total_mem
    }

    /// Compiles (or loads from the cache) every kernel file now, so timings exclude it.
    pub fn warm_up(&self) -> Result<()> {
        for f in compile::ALL {
            self.module(&f)?;
        }
        Ok(())
    }

    fn module(&self, file: &KernelFile) -> Result<Arc<CudaModule>> {
        let mut mods = self
            .modules
            .lock()
            .map_err(|_| Error::cuda("kernel module cache poisoned by an earlier panic"))?;
        if let Some(m) = mods.get(file.name) {
            return Ok(m.clone());
        }
        let cubin = compile::cubin(file, self.cc, self.cache_dir.as_deref())?;
        let module = drv(
            &format!("loading kernels/{}.cu", file.name),
            self.ctx.load_module(Ptx::from_binary(cubin)),
        )?;
        mods.insert(file.name, module.clone());
        Ok(module)
    }

    fn func(&self, file: &KernelFile, name: &str) -> Result<CudaFunction> {
        let m = self.module(file)?;
        drv(
            &format!("kernel {name} in kernels/{}.cu", file.name),
            m.load_function(name),
        )
    }

    fn alloc<T: Elem>(&self, len: usize) -> Result<CudaBuf<T>> {
        let slice = drv(
            &format!("allocating {} bytes", len.max(1) * std::mem::size_of::<T>()),
            self.stream.alloc_zeros::<T>(len.max(1)),
        )?;
        let buf = CudaBuf {
            slice,
            len,
            tracker: self.tracker.clone(),
        };
        self.tracker
            .alloc(buf.bytes(), self.free_memory_if_large(buf.bytes()));
        Ok(buf)
    }

    /// cuMemGetInfo costs a driver round trip: sampled for allocations of 1 MiB and more,
    /// which is where the peak comes from.
    fn free_memory_if_large(&self, bytes: u64) -> Option<u64> {
        (bytes >= 1 << 20)
            .then(|| self.ctx.mem_get_info().ok().map(|(f, _)| f as u64))
            .flatten()
    }

    /// RTN (`rtn_quantize` kernel) of the f32 weight `wd` already on the device ([n, k], the
    /// shape and scale dtype of `w`): levels [n, k], scales and zeros [groups, n]; `None` when
    /// a scale overflows the store dtype (the caller lets the CPU path name it).
    #[allow(clippy::type_complexity)]
    pub(crate) fn rtn_levels(
        &self,
        scheme: &QuantScheme,
        w: &Weight<'_>,
        wd: &CudaBuf<f32>,
    ) -> Result<Option<(CudaBuf<u8>, CudaBuf<f32>, CudaBuf<u32>)>> {
        let (n, k) = (w.out_features, w.in_features);
        scheme.check_shape(w.name, n, k)?;
        check_len("quantize_rtn", w.name, wd.len, n * k)?;
        let glen = scheme.group_len(k);
        let groups = scheme.num_groups(k);
        let store = match w.scale_dtype {
            DType::F16 => 0u32,
            DType::BF16 => 1,
            DType::F32 => 2,
            DType::I32 => {
                return Err(Error::tensor(w.name, "scales cannot be stored as I32"));
            }
        };
        let mut q = self.zeros::<u8>(n * k)?;
        let mut scales = self.zeros::<f32>(groups * n)?;
        let mut zeros = self.zeros::<u32>(groups * n)?;
        let mut overflow = self.zeros::<u32>(1)?;
        if n * k > 0 {
            let f = self.func(&compile::RTN, "rtn_quantize")?;
            let (n_u, k_u, gl, gr, bits, sym) = (
                as_u32("out_features", n)?,
                as_u32("in_features", k)?,
                as_u32("group_len", glen)?,
                as_u32("groups", groups)?,
                scheme.bits as u32,
                scheme.sym as u32,
            );
            let mut b = self.stream.launch_builder(&f);
            b.arg(&wd.slice)
                .arg(&mut q.slice)
                .arg(&mut scales.slice)
                .arg(&mut zeros.slice)
                .arg(&mut overflow.slice)
                .arg(&n_u)
                .arg(&k_u)
                .arg(&gl)
                .arg(&gr)
                .arg(&bits)
                .arg(&sym)
                .arg(&store);
            // SAFETY: matches rtn_quantize: one warp per (row, group).
            unsafe { b.launch(grid_1d((n * groups) as u64 * 32, 256)?) }
                .map_err(Self::launch_err("rtn_quantize"))?;
        }
        if self.download(&overflow)?[0] != 0 {
            return Ok(None);
        }
        Ok(Some((q, scales, zeros)))
    }

    /// Runs `f` with the pinned staging buffers (allocated at the first large copy).
    fn with_staging<R>(&self, f: impl FnOnce(&mut staging::Staging) -> Result<R>) -> Result<R> {
        let mut slot = self
            .staging
            .lock()
            .map_err(|_| Error::cuda("staging buffers poisoned by an earlier panic"))?;
        if slot.is_none() {
            *slot = Some(drv(
                "allocating pinned staging buffers",
                staging::Staging::new(&self.ctx),
            )?);
        }
        f(slot.as_mut().expect("just set"))
    }

    /// Device-to-device copy of `src` into `dst` (same length), queued on the stream: the
    /// bandwidth ceiling the decode benchmark compares against.
    pub fn copy_device<T: Elem>(&self, src: &CudaBuf<T>, dst: &mut CudaBuf<T>) -> Result<()> {
        check_len("copy_device", "dst", dst.len, src.len)?;
        drv(
            "cuMemcpyDtoDAsync",
            self.stream.memcpy_dtod(&src.slice, &mut dst.slice),
        )
    }

    /// Device time of the work `f` queues, in milliseconds (CUDA events around it).
    pub fn time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f32> {
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = drv("cuEventCreate", self.ctx.new_event(flags))?;
        let end = drv("cuEventCreate", self.ctx.new_event(flags))?;
        drv("cuEventRecord", start.record(&self.stream))?;
        f()?;
        drv("cuEventRecord", end.record(&self.stream))?;
        drv("cuEventSynchronize", end.synchronize())?;
        drv("cuEventElapsedTime", start.elapsed_ms(&end))
    }

    /// Uninitialized device memory (every element is written before it is read), counted
    /// like any other buffer.
    fn scratch<T: Elem>(&self, len: usize) -> Result<CudaBuf<T>> {
        // SAFETY: callers write every element before reading it.
        let slice = drv(
            &format!("allocating {} bytes", len.max(1) * std::mem::size_of::<T>()),
            unsafe { self.stream.alloc::<T>(len.max(1)) },
        )?;
        let buf = CudaBuf {
            slice,
            len,
            tracker: self.tracker.clone(),
        };
        self.tracker
            .alloc(buf.bytes(), self.free_memory_if_large(buf.bytes()));
        Ok(buf)
    }

    fn launch_err(name: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
        move |e| Error::cuda(format!("launching {name}: {e}"))
    }
}

impl Backend for CudaBackend {
    type Buf<T: Elem> = CudaBuf<T>;
    type Graph = RecordedGraph;

    fn name(&self) -> String {
        format!(
            "cuda:{} ({}, sm_{}{}, {:.0} GiB)",
            self.ctx.ordinal(),
            self.device_name,
            self.cc.0,
            self.cc.1,
            self.total_mem as f64 / (1u64 << 30) as f64
        )
    }

    fn record(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<RecordedGraph>> {
        if !self.own_stream {
            return Err(Error::cuda(
                "CUDA graphs need the backend's own stream (CudaOptions::own_stream; off with HYQ_CUDA_GRAPHS=0)",
            ));
        }
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        let generation = self.gemv_counters_generation.load(Ordering::Relaxed);
        // Relaxed: kernel lookups and cuMemGetInfo may run while the stream records.
        drv(
            "cuStreamBeginCapture",
            self.stream
                .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED),
        )?;
        let queued = f();
        // An error a drop stored meanwhile (cudarc keeps those for the next call) would make
        // cudarc's `end_capture` return before ending the capture: taken out here.
        let stored = self.ctx.check_err();
        if queued.is_err() || stored.is_err() {
            // End the capture with the driver call itself, so the stream is usable again.
            // SAFETY: the stream is live and capturing (begun above); the graph it returns,
            // if any, is destroyed at once.
            unsafe {
                if let Ok(g) = cudarc::driver::result::stream::end_capture(self.stream.cu_stream())
                {
                    if !g.is_null() {
                        let _ = cudarc::driver::result::graph::destroy(g);
                    }
                }
            }
            let _ = self.ctx.check_err();
            queued?;
            return drv("recording (a freed buffer)", stored).map(|_| None);
        }
        let graph = drv(
            "cuStreamEndCapture/cuGraphInstantiate",
            self.stream.end_capture(CUgraphInstantiate_flags(0)),
        )?;
        let Some(graph) = graph else { return Ok(None) };
        drv("cuGraphUpload", graph.upload())?;
        if self.gemv_counters_generation.load(Ordering::Relaxed) != generation {
            return Err(Error::cuda(
                "decode tickets were reallocated while recording",
            ));
        }
        Ok(Some(RecordedGraph { graph, generation }))
    }

    fn replay(&self, graph: &RecordedGraph) -> Result<()> {
        if self.gemv_counters_generation.load(Ordering::Relaxed) != graph.generation {
            return Err(Error::cuda(
                "recorded step is stale: the decode tickets were reallocated since",
            ));
        }
        drv("cuGraphLaunch", graph.graph.launch())
    }

    fn reserve_for_gptq(&self, out_features: usize) -> Result<()> {
        self.reserve_gemv_counters(out_features)
    }

    fn upload<T: Elem>(&self, host: &[T]) -> Result<CudaBuf<T>> {
        let mut buf = self.alloc::<T>(host.len())?;
        self.write(&mut buf, host)?;
        Ok(buf)
    }

    fn write<T: Elem>(&self, dst: &mut CudaBuf<T>, host: &[T]) -> Result<()> {
        check_len("write", "host data", host.len(), dst.len)?;
        let bytes = std::mem::size_of_val(host);
        if bytes >= staging::MIN_STAGED {
            // SAFETY: Elem types are plain numbers; the bytes of a live slice.
            let src = unsafe { std::slice::from_raw_parts(host.as_ptr() as *const u8, bytes) };
            let (ptr, _g) = dst.slice.device_ptr_mut(&self.stream);
            self.with_staging(|st| {
                drv("copy to device (staged)", st.upload(&self.stream, ptr, src))
            })?;
        } else if !host.is_empty() {
            let mut view = dst.slice.slice_mut(0..host.len());
            drv("copy to device", self.stream.memcpy_htod(host, &mut view))?;
        }
        Ok(())
    }

    fn zeros<T: Elem>(&self, len: usize) -> Result<CudaBuf<T>> {
        self.alloc(len)
    }

    fn download<T: Elem>(&self, buf: &CudaBuf<T>) -> Result<Vec<T>> {
        if buf.len == 0 {
            return Ok(Vec::new());
        }
        let mut host = vec![T::default(); buf.len];
        let bytes = std::mem::size_of_val(host.as_slice());
        if bytes >= staging::MIN_STAGED {
            // SAFETY: Elem types are plain numbers (every bit pattern the device wrote is a
            // value); the bytes of a live, exclusively borrowed vector.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(host.as_mut_ptr() as *mut u8, bytes) };
            let (src, _g) = buf.slice.device_ptr(&self.stream);
            self.with_staging(|st| {
                drv("copy to host (staged)", st.download(&self.stream, src, dst))
            })?;
            return Ok(host);
        }
        let view = buf.slice.slice(0..buf.len);
        drv("copy to host", self.stream.memcpy_dtoh(&view, &mut host))?;
        drv("synchronize", self.stream.synchronize())?;
        Ok(host)
    }

    fn len_of<T: Elem>(&self, buf: &CudaBuf<T>) -> usize {
        buf.len
    }

    fn synchronize(&self) -> Result<()> {
        drv("synchronize", self.stream.synchronize())
    }

    fn memory(&self) -> MemStats {
        let t = &self.tracker;
        let used_now = self
            .ctx
            .mem_get_info()
            .ok()
            .map(|(f, _)| t.free_at_start.saturating_sub(f as u64));
        if let Some(u) = used_now {
            t.min_free
                .fetch_min(t.free_at_start.saturating_sub(u), Ordering::Relaxed);
        }
        MemStats {
            allocated_bytes: t.current.load(Ordering::Relaxed),
            peak_allocated_bytes: t.peak.load(Ordering::Relaxed),
            device_used_delta: used_now,
            device_peak_delta: Some(
                t.free_at_start
                    .saturating_sub(t.min_free.load(Ordering::Relaxed)),
            ),
        }
    }

    fn rms_norm(
        &self,
        x: &CudaBuf<f32>,
        w: &CudaBuf<f32>,
        eps: f32,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        let rows = rows_of("rms_norm", "x", x.len, w.len)?;
        check_len("rms_norm", "out", out.len, x.len)?;
        if rows == 0 {
            return Ok(());
        }
        let (rows_u, dim) = (as_u32("rows", rows)?, as_u32("dim", w.len)?);
        let f = self.func(&compile::ELEMENTWISE, "rms_norm_f32")?;
        let cfg = LaunchConfig {
            grid_dim: (rows_u, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&x.slice)
            .arg(&w.slice)
            .arg(&mut out.slice)
            .arg(&rows_u)
            .arg(&dim)
            .arg(&eps);
        // SAFETY: argument types and order match rms_norm_f32; lengths checked above.
        unsafe { b.launch(cfg) }.map_err(Self::launch_err("rms_norm_f32"))?;
        Ok(())
    }

    fn rope(
        &self,
        x: &mut CudaBuf<f32>,
        positions: &CudaBuf<u32>,
        inv_freq: &CudaBuf<f32>,
        head_dim: usize,
    ) -> Result<()> {
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(runner_err(format!("rope: head_dim {head_dim} is not even")));
        }
        check_len("rope", "inv_freq", inv_freq.len, head_dim / 2)?;
        let rows = positions.len;
        if rows == 0 {
            return check_len("rope", "x", x.len, 0);
        }
        let width = rows_of("rope", "x", x.len, rows)?;
        rows_of("rope", "a row of x", width, head_dim)?;
        let f = self.func(&compile::ELEMENTWISE, "rope_f32")?;
        let cfg = grid_1d((x.len / 2) as u64, 256)?;
        let (rows_u, width_u, hd) = (
            as_u32("rows", rows)?,
            as_u32("width", width)?,
            as_u32("head_dim", head_dim)?,
        );
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut x.slice)
            .arg(&positions.slice)
            .arg(&inv_freq.slice)
            .arg(&rows_u)
            .arg(&width_u)
            .arg(&hd);
        // SAFETY: matches rope_f32; shapes checked above.
        unsafe { b.launch(cfg) }.map_err(Self::launch_err("rope_f32"))?;
        Ok(())
    }

    fn silu_mul(
        &self,
        gate: &CudaBuf<f32>,
        up: &CudaBuf<f32>,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        check_len("silu_mul", "up", up.len, gate.len)?;
        check_len("silu_mul", "out", out.len, gate.len)?;
        if gate.len == 0 {
            return Ok(());
        }
        let f = self.func(&compile::ELEMENTWISE, "silu_mul_f32")?;
        let n = gate.len as u64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&gate.slice)
            .arg(&up.slice)
            .arg(&mut out.slice)
            .arg(&n);
        // SAFETY: matches silu_mul_f32.
        unsafe { b.launch(grid_1d(n, 256)?) }.map_err(Self::launch_err("silu_mul_f32"))?;
        Ok(())
    }

    fn silu_mul_fused(
        &self,
        gu: &CudaBuf<f32>,
        inter: usize,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        check_silu_mul_fused(gu.len, inter, out.len)?;
        if out.len == 0 {
            return Ok(());
        }
        let f = self.func(&compile::ELEMENTWISE, "silu_mul_fused_f32")?;
        let (n, inter_u) = (out.len as u64, as_u32("inter", inter)?);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&gu.slice).arg(&mut out.slice).arg(&n).arg(&inter_u);
        // SAFETY: matches silu_mul_fused_f32; shapes checked above.
        unsafe { b.launch(grid_1d(n, 256)?) }.map_err(Self::launch_err("silu_mul_fused_f32"))?;
        Ok(())
    }

    fn embedding(
        &self,
        table: &CudaBuf<u16>,
        half: HalfKind,
        hidden: usize,
        ids: &CudaBuf<u32>,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        let vocab = rows_of("embedding", "table", table.len, hidden)?;
        check_len("embedding", "out", out.len, ids.len * hidden)?;
        if ids.len == 0 {
            return Ok(());
        }
        let f = self.func(&compile::ELEMENTWISE, "embedding_half")?;
        let (rows, hid, voc, kind) = (
            as_u32("rows", ids.len)?,
            as_u32("hidden", hidden)?,
            as_u32("vocab", vocab)?,
            half.code(),
        );
        let mut b = self.stream.launch_builder(&f);
        b.arg(&table.slice)
            .arg(&ids.slice)
            .arg(&mut out.slice)
            .arg(&rows)
            .arg(&hid)
            .arg(&voc)
            .arg(&kind);
        // SAFETY: matches embedding_half.
        unsafe { b.launch(grid_1d(out.len as u64, 256)?) }
            .map_err(Self::launch_err("embedding_half"))?;
        Ok(())
    }

    fn argmax(
        &self,
        x: &CudaBuf<f32>,
        cols: usize,
        out: &mut CudaBuf<u32>,
        margin: &mut CudaBuf<f32>,
    ) -> Result<()> {
        let rows = rows_of("argmax", "x", x.len, cols)?;
        check_len("argmax", "out", out.len, rows)?;
        check_len("argmax", "margin", margin.len, rows)?;
        if rows == 0 {
            return Ok(());
        }
        let f = self.func(&compile::ELEMENTWISE, "argmax_f32")?;
        let (rows_u, cols_u) = (as_u32("rows", rows)?, as_u32("cols", cols)?);
        let cfg = LaunchConfig {
            grid_dim: (rows_u, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&f);
        b.arg(&x.slice)
            .arg(&mut out.slice)
            .arg(&mut margin.slice)
            .arg(&rows_u)
            .arg(&cols_u);
        // SAFETY: matches argmax_f32, which needs exactly ARGMAX_THREADS = 1024 threads.
        unsafe { b.launch(cfg) }.map_err(Self::launch_err("argmax_f32"))?;
        Ok(())
    }

    fn to_half(&self, x: &CudaBuf<f32>, half: HalfKind, out: &mut CudaBuf<u16>) -> Result<()> {
        check_len("to_half", "out", out.len, x.len)?;
        if x.len == 0 {
            return Ok(());
        }
        let f = self.func(&compile::ELEMENTWISE, "to_half_f32")?;
        let (n, kind) = (x.len as u64, half.code());
        let mut a = launch::RawArgs::default();
        a.ptr(self.dptr(x)).ptr(self.dptr(out)).u64(n).u32(kind);
        // SAFETY: matches to_half_f32.
        unsafe { self.launch_small(&f, grid_1d(n, 256)?, &mut a, "to_half_f32") }
    }

    fn widen_half(&self, x: &CudaBuf<u16>, half: HalfKind, out: &mut CudaBuf<f32>) -> Result<()> {
        check_len("widen_half", "out", out.len, x.len)?;
        if x.len == 0 {
            return Ok(());
        }
        let f = self.func(&compile::ELEMENTWISE, "from_half_u16")?;
        let (n, kind) = (x.len as u64, half.code());
        let mut b = self.stream.launch_builder(&f);
        b.arg(&x.slice).arg(&mut out.slice).arg(&n).arg(&kind);
        // SAFETY: matches from_half_u16.
        unsafe { b.launch(grid_1d(n, 256)?) }.map_err(Self::launch_err("from_half_u16"))?;
        Ok(())
    }

    fn gemm(
        &self,
        x: &CudaBuf<u16>,
        w: &CudaBuf<u16>,
        half: HalfKind,
        m: usize,
        n: usize,
        k: usize,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        check_len("gemm", "x", x.len, m * k)?;
        check_len("gemm", "w", w.len, n * k)?;
        check_len("gemm", "out", out.len, m * n)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (xp, _gx) = x.slice.device_ptr(&self.stream);
        let (wp, _gw) = w.slice.device_ptr(&self.stream);
        let (op, _go) = out.slice.device_ptr_mut(&self.stream);
        // SAFETY: live device buffers of the checked sizes on our stream; out rows are n apart.
        unsafe { self.gemm_ptrs(xp, wp, op, half, (m, n, k), n) }
    }

    fn gemm_gptq(
        &self,
        x: &CudaBuf<u16>,
        w: &GptqWeight<Self>,
        m: usize,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        let (n, k) = (w.out_features, w.in_features);
        check_len("gemm_gptq", "x", x.len, m * k)?;
        check_len("gemm_gptq", "out", out.len, m * n)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        self.gptq_matmul(x, w, m, out)
    }

    fn dequantize_gptq(&self, w: &GptqWeight<Self>, out: &mut CudaBuf<u16>) -> Result<()> {
        check_len(
            "dequantize_gptq",
            "out",
            out.len,
            w.out_features * w.in_features,
        )?;
        self.gptq_dequantize_all(w, out)
    }

    fn kv_append(
        &self,
        k: &CudaBuf<f32>,
        v: &CudaBuf<f32>,
        slots: &CudaBuf<u32>,
        positions: &CudaBuf<u32>,
        shape: &AttnShape,
        half: HalfKind,
        k_cache: &mut CudaBuf<u16>,
        v_cache: &mut CudaBuf<u16>,
    ) -> Result<()> {
        shape.check()?;
        let kvd = shape.kv_width();
        let rows = slots.len;
        check_len("kv_append", "positions", positions.len, rows)?;
        check_len("kv_append", "k", k.len, rows * kvd)?;
        check_len("kv_append", "v", v.len, rows * kvd)?;
        let n_slots = rows_of("kv_append", "k_cache", k_cache.len, shape.max_len * kvd)?;
        check_len("kv_append", "v_cache", v_cache.len, k_cache.len)?;
        if rows == 0 {
            return Ok(());
        }
        let f = self.func(&compile::ELEMENTWISE, "kv_append_half")?;
        let (rows_u, kvd_u, ml, ns, kind) = (
            as_u32("rows", rows)?,
            as_u32("kv width", kvd)?,
            as_u32("max_len", shape.max_len)?,
            as_u32("slots", n_slots)?,
            half.code(),
        );
        let mut a = launch::RawArgs::default();
        a.ptr(self.dptr(k))
            .ptr(self.dptr(v))
            .ptr(self.dptr(slots))
            .ptr(self.dptr(positions))
            .ptr(self.dptr(k_cache))
            .ptr(self.dptr(v_cache))
            .u32(rows_u)
            .u32(kvd_u)
            .u32(ml)
            .u32(ns)
            .u32(kind);
        let cfg = grid_1d((rows * kvd) as u64, 256)?;
        // SAFETY: matches kv_append_half; out-of-range rows are skipped by the kernel.
        unsafe { self.launch_small(&f, cfg, &mut a, "kv_append_half") }
    }

    fn attention(
        &self,
        q: &CudaBuf<f32>,
        k_cache: &CudaBuf<u16>,
        v_cache: &CudaBuf<u16>,
        half: HalfKind,
        slots: &CudaBuf<u32>,
        positions: &CudaBuf<u32>,
        shape: &AttnShape,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        shape.check()?;
        let (qd, kvd) = (shape.q_width(), shape.kv_width());
        let rows = slots.len;
        check_len("attention", "positions", positions.len, rows)?;
        check_len("attention", "q", q.len, rows * qd)?;
        check_len("attention", "out", out.len, rows * qd)?;
        let n_slots = rows_of("attention", "k_cache", k_cache.len, shape.max_len * kvd)?;
        check_len("attention", "v_cache", v_cache.len, k_cache.len)?;
        if rows == 0 {
            return Ok(());
        }
        if rows > 65_535 {
            return Err(runner_err(format!(
                "attention: {rows} rows in one call; at most 65535"
            )));
        }
        let f = self.func(&compile::ATTENTION, "attention_half")?;
        let (heads, kvh, hd, ml, ns, kind) = (
            as_u32("heads", shape.heads)?,
            as_u32("kv_heads", shape.kv_heads)?,
            as_u32("head_dim", shape.head_dim)?,
            as_u32("max_len", shape.max_len)?,
            as_u32("slots", n_slots)?,
            half.code(),
        );
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        // Split the context when (heads x rows) blocks alone would leave multiprocessors idle:
        // chunks of at least 256 keys, about four blocks per multiprocessor in all.
        let blocks = shape.heads * rows;
        let by_parallelism = (4 * self.sm_count as usize).div_ceil(blocks);
        let splits = by_parallelism.min(shape.max_len.div_ceil(256)).max(1);
        let chunk = as_u32("chunk", shape.max_len.div_ceil(splits))?;
        let part = if splits > 1 {
            Some(self.scratch::<f32>(rows * shape.heads * splits * (shape.head_dim + 2))?)
        } else {
            None
        };
        let cfg = LaunchConfig {
            grid_dim: (heads, rows as u32, as_u32("splits", splits)?),
            block_dim: (ATT_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut a = launch::RawArgs::default();
        a.ptr(self.dptr(q))
            .ptr(self.dptr(k_cache))
            .ptr(self.dptr(v_cache))
            .ptr(self.dptr(slots))
            .ptr(self.dptr(positions))
            .ptr(self.dptr(out))
            .ptr(part.as_ref().map_or(0, |p| self.dptr(p)))
            .u32(heads)
            .u32(kvh)
            .u32(hd)
            .u32(ml)
            .u32(ns)
            .f32(scale)
            .u32(chunk)
            .u32(kind);
        // SAFETY: matches attention_half (ATT_THREADS threads); shapes checked above; `part`
        // holds rows x heads x splits x (head_dim + 2) floats when there are several splits.
        unsafe { self.launch_small(&f, cfg, &mut a, "attention_half") }?;
        if let Some(p) = &part {
            let f = self.func(&compile::ATTENTION, "attention_merge_f32")?;
            let sp = as_u32("splits", splits)?;
            let cfg = LaunchConfig {
                grid_dim: (heads, rows as u32, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut a = launch::RawArgs::default();
            a.ptr(self.dptr(p))
                .ptr(self.dptr(out))
                .u32(heads)
                .u32(hd)
                .u32(sp);
            // SAFETY: matches attention_merge_f32.
            unsafe { self.launch_small(&f, cfg, &mut a, "attention_merge_f32") }?;
        }
        Ok(())
    }

    fn add(&self, x: &mut CudaBuf<f32>, y: &CudaBuf<f32>) -> Result<()> {
        check_len("add", "y", y.len, x.len)?;
        if x.len == 0 {
            return Ok(());
        }
        let f = self.func(&compile::ELEMENTWISE, "add_f32")?;
        let n = x.len as u64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut x.slice).arg(&y.slice).arg(&n);
        // SAFETY: matches add_f32.
        unsafe { b.launch(grid_1d(n, 256)?) }.map_err(Self::launch_err("add_f32"))?;
        Ok(())
    }

    fn add_bias(&self, x: &mut CudaBuf<f32>, bias: &CudaBuf<f32>) -> Result<()> {
        rows_of("add_bias", "x", x.len, bias.len)?;
        if x.len == 0 {
            return Ok(());
        }
        let f = self.func(&compile::ELEMENTWISE, "add_bias_f32")?;
        let (n, cols) = (x.len as u64, as_u32("bias length", bias.len)?);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut x.slice).arg(&bias.slice).arg(&n).arg(&cols);
        // SAFETY: matches add_bias_f32.
        unsafe { b.launch(grid_1d(n, 256)?) }.map_err(Self::launch_err("add_bias_f32"))?;
        Ok(())
    }

    fn split_cols(
        &self,
        src: &CudaBuf<f32>,
        rows: usize,
        src_cols: usize,
        col0: usize,
        dst: &mut CudaBuf<f32>,
    ) -> Result<()> {
        let dst_cols = check_split_cols(src.len, rows, src_cols, col0, dst.len)?;
        if dst.len == 0 {
            return Ok(());
        }
        let f = self.func(&compile::ELEMENTWISE, "split_cols_f32")?;
        let (n, sc, c0, dc) = (
            dst.len as u64,
            as_u32("src_cols", src_cols)?,
            as_u32("col0", col0)?,
            as_u32("dst_cols", dst_cols)?,
        );
        let mut b = self.stream.launch_builder(&f);
        b.arg(&src.slice)
            .arg(&mut dst.slice)
            .arg(&n)
            .arg(&sc)
            .arg(&c0)
            .arg(&dc);
        // SAFETY: matches split_cols_f32; shapes checked above.
        unsafe { b.launch(grid_1d(n, 256)?) }.map_err(Self::launch_err("split_cols_f32"))?;
        Ok(())
    }

    fn add_rms_norm_half(
        &self,
        x: &mut CudaBuf<f32>,
        y: Option<&CudaBuf<f32>>,
        w: &CudaBuf<f32>,
        eps: f32,
        half: HalfKind,
        out: &mut CudaBuf<u16>,
    ) -> Result<()> {
        let rows = check_add_rms_norm_half(x.len, y.map(|y| y.len), w.len, out.len)?;
        if rows == 0 {
            return Ok(());
        }
        let (rows_u, dim, kind) = (as_u32("rows", rows)?, as_u32("dim", w.len)?, half.code());
        let name = if y.is_some() {
            "add_rms_norm_half"
        } else {
            "rms_norm_half"
        };
        let f = self.func(&compile::ELEMENTWISE, name)?;
        let cfg = LaunchConfig {
            grid_dim: (rows_u, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut a = launch::RawArgs::default();
        a.ptr(self.dptr(x));
        if let Some(y) = y {
            a.ptr(self.dptr(y));
        }
        a.ptr(self.dptr(w))
            .ptr(self.dptr(out))
            .u32(rows_u)
            .u32(dim)
            .f32(eps)
            .u32(kind);
        // SAFETY: argument types and order match add_rms_norm_half (x, y, w, out, rows, dim,
        // eps, kind) or rms_norm_half (the same without y); lengths checked above.
        unsafe { self.launch_small(&f, cfg, &mut a, name) }
    }

    fn silu_mul_fused_half(
        &self,
        gu: &CudaBuf<f32>,
        inter: usize,
        half: HalfKind,
        out: &mut CudaBuf<u16>,
    ) -> Result<()> {
        check_silu_mul_fused(gu.len, inter, out.len)?;
        if out.len == 0 {
            return Ok(());
        }
        let f = self.func(&compile::ELEMENTWISE, "silu_mul_fused_half")?;
        let (n, inter_u, kind) = (out.len as u64, as_u32("inter", inter)?, half.code());
        let mut a = launch::RawArgs::default();
        a.ptr(self.dptr(gu))
            .ptr(self.dptr(out))
            .u64(n)
            .u32(inter_u)
            .u32(kind);
        // SAFETY: matches silu_mul_fused_half; shapes checked above.
        unsafe { self.launch_small(&f, grid_1d(n, 256)?, &mut a, "silu_mul_fused_half") }
    }

    fn qkv_rope_norm(
        &self,
        qkv: &CudaBuf<f32>,
        positions: &CudaBuf<u32>,
        inv_freq: &CudaBuf<f32>,
        shape: &AttnShape,
        qk_norm: Option<(&CudaBuf<f32>, &CudaBuf<f32>)>,
        eps: f32,
        q: &mut CudaBuf<f32>,
        k: &mut CudaBuf<f32>,
        v: &mut CudaBuf<f32>,
    ) -> Result<()> {
        let rows = check_qkv_rope_norm(
            qkv.len,
            positions.len,
            inv_freq.len,
            shape,
            qk_norm.map(|(a, b)| (a.len, b.len)),
            q.len,
            k.len,
            v.len,
        )?;
        if rows == 0 {
            return Ok(());
        }
        let f = self.func(&compile::ELEMENTWISE, "qkv_rope_norm_f32")?;
        let (heads, kv_heads, hd) = (
            as_u32("heads", shape.heads)?,
            as_u32("kv_heads", shape.kv_heads)?,
            as_u32("head_dim", shape.head_dim)?,
        );
        let cfg = LaunchConfig {
            grid_dim: (as_u32("rows", rows)?, heads + 2 * kv_heads, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // Without QK-norm the weights are not read; inv_freq stands in for their pointers.
        let (qn, kn, has_norm) = match qk_norm {
            Some((a, b)) => (a, b, 1u32),
            None => (inv_freq, inv_freq, 0u32),
        };
        let mut a = launch::RawArgs::default();
        a.ptr(self.dptr(qkv))
            .ptr(self.dptr(positions))
            .ptr(self.dptr(inv_freq))
            .ptr(self.dptr(qn))
            .ptr(self.dptr(kn))
            .ptr(self.dptr(q))
            .ptr(self.dptr(k))
            .ptr(self.dptr(v))
            .u32(heads)
            .u32(kv_heads)
            .u32(hd)
            .f32(eps)
            .u32(has_norm);
        // SAFETY: matches qkv_rope_norm_f32; shapes checked above (head_dim even, <= 256, the
        // block size).
        unsafe { self.launch_small(&f, cfg, &mut a, "qkv_rope_norm_f32") }
    }

    fn gather_rows(
        &self,
        x: &CudaBuf<f32>,
        width: usize,
        rows: &CudaBuf<u32>,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        let rows_in = rows_of("gather_rows", "x", x.len, width)?;
        check_len("gather_rows", "out", out.len, rows.len * width)?;
        if out.len == 0 {
            return Ok(());
        }
        let f = self.func(&compile::ELEMENTWISE, "gather_rows_f32")?;
        let (ro, ri, w) = (
            as_u32("rows", rows.len)?,
            as_u32("rows", rows_in)?,
            as_u32("width", width)?,
        );
        let mut b = self.stream.launch_builder(&f);
        b.arg(&x.slice)
            .arg(&rows.slice)
            .arg(&mut out.slice)
            .arg(&ro)
            .arg(&ri)
            .arg(&w);
        // SAFETY: matches gather_rows_f32.
        unsafe { b.launch(grid_1d(out.len as u64, 256)?) }
            .map_err(Self::launch_err("gather_rows_f32"))?;
        Ok(())
    }

    fn quantize_rtn(&self, scheme: &QuantScheme, w: &Weight<'_>) -> Result<QuantizedLinear> {
        let (n, k) = (w.out_features, w.in_features);
        scheme.check_shape(w.name, n, k)?;
        check_len("quantize_rtn", w.name, w.data.len(), n * k)?;
        let wd = self.upload(w.data)?;
        match self.rtn_levels(scheme, w, &wd)? {
            Some((q, scales, zeros)) => {
                let glen = scheme.group_len(k);
                Ok(QuantizedLinear {
                    scheme: *scheme,
                    out_features: n,
                    in_features: k,
                    q: self.download(&q)?,
                    scales: self.download(&scales)?,
                    zeros: self.download(&zeros)?,
                    g_idx: (0..k).map(|i| (i / glen) as u32).collect(),
                })
            }
            // A scale overflows the store dtype: the CPU path names the group's scale.
            None => Rtn { scheme: *scheme }.quantize(w),
        }
    }

    fn attention_prefill(
        &self,
        q: &CudaBuf<f32>,
        k: &CudaBuf<f32>,
        v: &CudaBuf<f32>,
        samples: usize,
        seqlen: usize,
        shape: &AttnShape,
        math: crate::backend::PrefillMath,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        self.prefill_attention(q, k, v, samples, seqlen, shape, math, out)
    }

    fn hessian_add(
        &self,
        x: &CudaBuf<f32>,
        rows: usize,
        h: &mut CudaBuf<f32>,
        dim: usize,
        nsamples: usize,
    ) -> Result<()> {
        self.hessian_add_f32(x, rows, h, dim, nsamples)
    }

    fn hessian_add_half(
        &self,
        x: &CudaBuf<u16>,
        half: HalfKind,
        rows: usize,
        h: &mut CudaBuf<f32>,
        dim: usize,
        nsamples: usize,
    ) -> Result<()> {
        self.hessian_add_16(x, half, rows, h, dim, nsamples)
    }

    fn gptq_inverse_factor(
        &self,
        h: &CudaBuf<f32>,
        dim: usize,
        plan: &SweepPlan,
        damp: f64,
        name: &str,
    ) -> Result<InverseFactor<Self>> {
        // cuSOLVER symbols load at first call; a missing one must not unwind.
        probe::no_panic("GPTQ inverse factor on the GPU", || {
            self.inverse_factor(h, dim, plan, damp, name)
        })
    }

    fn gptq_output_errors(
        &self,
        w: &[f32],
        candidates: &[&[f32]],
        h: &CudaBuf<f32>,
        dim: usize,
    ) -> Result<Vec<f64>> {
        self.output_errors(w, candidates, h, dim)
    }

    fn gptq_quantize(
        &self,
        w: &Weight<'_>,
        h: &CudaBuf<f32>,
        nsamples: usize,
        cfg: &GptqConfig,
    ) -> Result<GptqOutcome> {
        probe::no_panic("GPTQ on the GPU", || self.gptq_solve(w, h, nsamples, cfg))
    }

    fn gptq_linear(&self, job: &LinearJob<'_, Self>) -> Result<SolvedLinear<Self>> {
        probe::no_panic("GPTQ on the GPU", || self.solve_linear(job))
    }
}
