//! GPTQ on the GPU: the Hessian (cuBLAS SSYRK), the inverse factor (cuSOLVER potrf + trtri in
//! f64) and the blocked sweep (kernels/gptq_solve.cu, one warp per output row, plus a cuBLAS
//! SGEMM for each block's lazy trailing update). The host-side decisions (sweep order, dead
//! columns, damping retries, up-front group parameters, the final `QuantizedLinear`) are
//! gptq.rs's own functions, so both backends share them.

use std::sync::Arc;

use cudarc::cublas::sys as blas_sys;
use cudarc::cusolver::{sys as sol_sys, DnHandle};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::{as_u32, compile, drv, grid_1d, probe, CudaBackend, CudaBuf};
use crate::backend::{
    check_len, runner_err, Backend, HalfKind, InverseFactor, LinearJob, PrefillMath, SolvedLinear,
};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::quant::gptq::{
    assemble, check_solver_inputs, check_solver_shapes, gptq_quantize, non_finite_hessian,
    with_damping_retries, GptqConfig, GptqOutcome, Hessian, SweepPlan,
};
use crate::quant::grid::GridFit;
use crate::quant::stats::ErrorStats;
use crate::quant::{QuantScheme, Weight};

/// Widest lazy-update block the sweep kernel holds in registers (GQ_MAX_BLOCK).
pub(crate) const MAX_BLOCK: usize = 128;

fn blas_err(what: &str) -> impl Fn(cudarc::cublas::result::CublasError) -> Error + '_ {
    move |e| Error::cuda(format!("{what}: {e:?}"))
}

fn sol(what: &str, status: sol_sys::cusolverStatus_t) -> Result<()> {
    status
        .result()
        .map_err(|e| Error::cuda(format!("{what}: {e}")))
}

fn int(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| runner_err(format!("{what} = {v} is too large for cuBLAS")))
}

/// What a cached inverse factor was computed from (`CudaBackend::shared_factor`).
#[derive(PartialEq, Eq)]
pub(super) struct FactorKey {
    version: u64,
    perm: Vec<usize>,
    dead: Vec<bool>,
    damp: u64,
}

/// The device sweep's result (`CudaBackend::sweep`): levels in sweep order [n_out, k] and
/// group parameters [groups, n_out], still on the device.
struct Sweep {
    q: CudaBuf<u8>,
    scales: CudaBuf<f32>,
    zeros: CudaBuf<u32>,
    plan: SweepPlan,
    col_group: Vec<usize>,
    damp_used: f64,
    retries: u32,
    loss: f64,
    /// A group scale overflowed the store dtype (the host then reruns the CPU solver).
    overflow: bool,
    phases: Vec<(&'static str, f64)>,
}

impl CudaBackend {
    /// The cuSOLVER handle, created at first use on our stream.
    fn solver_handle(&self) -> Result<Arc<DnHandle>> {
        let mut slot = self
            .solver
            .lock()
            .map_err(|_| Error::cuda("cuSOLVER handle poisoned by an earlier panic"))?;
        if let Some(h) = slot.as_ref() {
            return Ok(h.clone());
        }
        if !probe::cusolver_present() {
            return Err(Error::cuda(
                "GPTQ on the GPU needs cuSOLVER, but libcusolver.so could not be loaded; put the \
                 CUDA 13 toolkit's lib64 on LD_LIBRARY_PATH or point CUDA_PATH at the toolkit",
            ));
        }
        let handle = probe::no_panic("cusolverDnCreate", || {
            DnHandle::new(self.stream.clone())
                .map_err(|e| Error::cuda(format!("cusolverDnCreate: {e}")))
        })?;
        // Same input, same output: cuSOLVER may otherwise pick non-deterministic reductions.
        handle
            .set_deterministic_mode(
                sol_sys::cusolverDeterministicMode_t::CUSOLVER_DETERMINISTIC_RESULTS,
            )
            .map_err(|e| Error::cuda(format!("cusolverDnSetDeterministicMode: {e}")))?;
        let handle = Arc::new(handle);
        *slot = Some(handle.clone());
        Ok(handle)
    }

    /// One element of a buffer, to the host.
    fn read_one<T: crate::backend::Elem>(&self, buf: &CudaBuf<T>, i: usize) -> Result<T> {
        let mut host = [T::default()];
        let view = buf.slice.slice(i..i + 1);
        drv("copy to host", self.stream.memcpy_dtoh(&view, &mut host))?;
        drv("synchronize", self.stream.synchronize())?;
        Ok(host[0])
    }

    /// Causal attention of whole sequences: per (sample, kv head), one batched SGEMM over the
    /// query heads sharing that kv head for the scaled scores, the causal softmax kernel, one
    /// batched SGEMM for P·V. Scores of one (sample, kv head) at a time: group·seqlen² floats.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn prefill_attention(
        &self,
        q: &CudaBuf<f32>,
        k: &CudaBuf<f32>,
        v: &CudaBuf<f32>,
        samples: usize,
        seqlen: usize,
        shape: &crate::backend::AttnShape,
        math: PrefillMath,
        out: &mut CudaBuf<f32>,
    ) -> Result<()> {
        shape.check()?;
        let rows = samples * seqlen;
        let (qd, kvd, hd) = (shape.q_width(), shape.kv_width(), shape.head_dim);
        check_len("attention_prefill", "q", q.len, rows * qd)?;
        check_len("attention_prefill", "k", k.len, rows * kvd)?;
        check_len("attention_prefill", "v", v.len, rows * kvd)?;
        check_len("attention_prefill", "out", out.len, rows * qd)?;
        if rows == 0 {
            return Ok(());
        }
        let group = shape.heads / shape.kv_heads;
        let mut scores = self.scratch::<f32>(group * seqlen * seqlen)?;
        let softmax = self.func(&compile::GPTQ_SOLVE, "gq_causal_softmax")?;
        let (sl_i, hd_i, qd_i, kvd_i, g_i) = (
            int("seqlen", seqlen)?,
            int("head_dim", hd)?,
            int("q width", qd)?,
            int("kv width", kvd)?,
            int("group", group)?,
        );
        let sq = (seqlen * seqlen) as i64;
        let scale = 1.0 / (hd as f32).sqrt();
        let one = 1.0f32;
        let fsz = std::mem::size_of::<f32>() as u64;
        let (sl_u, g_u) = (as_u32("seqlen", seqlen)?, as_u32("group", group)?);
        for s in 0..samples {
            for g in 0..shape.kv_heads {
                let q_off = ((s * seqlen * qd + g * group * hd) as u64) * fsz;
                let kv_off = ((s * seqlen * kvd + g * hd) as u64) * fsz;
                {
                    let (qp, _gq) = q.slice.device_ptr(&self.stream);
                    let (kp, _gk) = k.slice.device_ptr(&self.stream);
                    let (sp, _gs) = scores.slice.device_ptr_mut(&self.stream);
                    // Row-major S[i][j] = scale · Σ_d Q[i][d] K[j][d] is column-major
                    // C(j, i) = Kcᵀ · Qc with Kc = K as column-major [hd, seqlen] (ld kv
                    // width) and Qc likewise (ld q width); one batch entry per query head.
                    // SAFETY: offsets and strides stay inside q, k ([rows, width]) and
                    // scores (group x seqlen²); handle on our stream.
                    unsafe {
                        self.batched_gemm_f32(
                            math,
                            blas_sys::cublasOperation_t::CUBLAS_OP_T,
                            blas_sys::cublasOperation_t::CUBLAS_OP_N,
                            (sl_i, sl_i, hd_i),
                            scale,
                            ((kp + kv_off) as *const f32, kvd_i, 0),
                            ((qp + q_off) as *const f32, qd_i, hd as i64),
                            (sp as *mut f32, sl_i, sq),
                            g_i,
                        )
                        .map_err(blas_err("cublasGemmStridedBatchedEx (attention scores)"))?;
                    }
                }
                let mut b = self.stream.launch_builder(&softmax);
                b.arg(&mut scores.slice).arg(&sl_u);
                let cfg = LaunchConfig {
                    grid_dim: (sl_u, g_u, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: matches gq_causal_softmax: one block per (row, head) of scores.
                unsafe { b.launch(cfg) }.map_err(Self::launch_err("gq_causal_softmax"))?;
                {
                    let (vp, _gv) = v.slice.device_ptr(&self.stream);
                    let (sp, _gs) = scores.slice.device_ptr(&self.stream);
                    let (op, _go) = out.slice.device_ptr_mut(&self.stream);
                    // Row-major O[i][d] = Σ_j P[i][j] V[j][d]: column-major Oc = Vc · Pc
                    // with Pc(j, i) = P[i][j] (ld seqlen), Oc ld q width.
                    // SAFETY: as above; out is [rows, q width].
                    unsafe {
                        self.batched_gemm_f32(
                            math,
                            blas_sys::cublasOperation_t::CUBLAS_OP_N,
                            blas_sys::cublasOperation_t::CUBLAS_OP_N,
                            (hd_i, sl_i, sl_i),
                            one,
                            ((vp + kv_off) as *const f32, kvd_i, 0),
                            (sp as *const f32, sl_i, sq),
                            ((op + q_off) as *mut f32, qd_i, hd as i64),
                            g_i,
                        )
                        .map_err(blas_err("cublasGemmStridedBatchedEx (attention output)"))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Column-major strided batched C = alpha · op(A) · op(B) on f32 buffers: plain f32
    /// (CUDA cores, `PrefillMath::F32`) or with TF32 tensor cores (`PrefillMath::Tf32`: the
    /// inputs rounded to 10-bit mantissas, f32 accumulation).
    /// # Safety
    /// Pointers, leading dimensions and strides must describe live device buffers.
    #[allow(clippy::too_many_arguments)]
    unsafe fn batched_gemm_f32(
        &self,
        math: PrefillMath,
        ta: blas_sys::cublasOperation_t,
        tb: blas_sys::cublasOperation_t,
        (m, n, k): (i32, i32, i32),
        alpha: f32,
        (a, lda, stride_a): (*const f32, i32, i64),
        (b, ldb, stride_b): (*const f32, i32, i64),
        (c, ldc, stride_c): (*mut f32, i32, i64),
        batch: i32,
    ) -> std::result::Result<(), cudarc::cublas::result::CublasError> {
        let beta = 0.0f32;
        let compute = match math {
            PrefillMath::F32 => blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            PrefillMath::Tf32 => blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        };
        let f32t = blas_sys::cudaDataType::CUDA_R_32F;
        cudarc::cublas::result::gemm_strided_batched_ex(
            *self.blas.handle(),
            ta,
            tb,
            m,
            n,
            k,
            &alpha as *const f32 as *const _,
            a as *const _,
            f32t,
            lda,
            stride_a,
            b as *const _,
            f32t,
            ldb,
            stride_b,
            &beta as *const f32 as *const _,
            c as *mut _,
            f32t,
            ldc,
            stride_c,
            batch,
            compute,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }

    /// Copies the row-major upper triangle of `h` ([dim, dim]) onto the lower one.
    fn mirror_upper_to_lower(&self, h: &mut CudaBuf<f32>, dim: usize) -> Result<()> {
        let f = self.func(&compile::GPTQ_SOLVE, "gq_mirror_upper_to_lower")?;
        let n_u = as_u32("hessian dim", dim)?;
        let tiles = as_u32("hessian tiles", dim.div_ceil(32))?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut h.slice).arg(&n_u);
        let cfg = LaunchConfig {
            grid_dim: (tiles, tiles, 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches gq_mirror_upper_to_lower (32x8 threads per 32x32 tile); h holds
        // dim x dim floats.
        unsafe { b.launch(cfg) }.map_err(Self::launch_err("gq_mirror_upper_to_lower"))?;
        Ok(())
    }

    pub(super) fn hessian_add_f32(
        &self,
        x: &CudaBuf<f32>,
        rows: usize,
        h: &mut CudaBuf<f32>,
        dim: usize,
        nsamples: usize,
    ) -> Result<()> {
        check_len("hessian_add", "x", x.len, rows * dim)?;
        check_len("hessian_add", "h", h.len, dim * dim)?;
        if rows == 0 || dim == 0 {
            return Ok(());
        }
        let total = (nsamples + rows) as f64;
        let beta = (nsamples as f64 / total) as f32;
        let alpha = (2.0 / total) as f32;
        let (n_i, k_i) = (int("hessian dim", dim)?, int("hessian rows", rows)?);
        {
            // Row-major x [rows, dim] is column-major xc [dim, rows]; XᵀX = xc·xcᵀ. SSYRK
            // writes the column-major lower triangle (row-major upper), the mirror kernel the
            // rest, so H is exactly symmetric like the CPU's.
            let (xp, _gx) = x.slice.device_ptr(&self.stream);
            let (hp, _gh) = h.slice.device_ptr_mut(&self.stream);
            // SAFETY: live buffers of the checked sizes; the handle is bound to our stream.
            unsafe {
                blas_sys::cublasSsyrk_v2(
                    *self.blas.handle(),
                    blas_sys::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER,
                    blas_sys::cublasOperation_t::CUBLAS_OP_N,
                    n_i,
                    k_i,
                    &alpha,
                    xp as *const f32,
                    n_i,
                    &beta,
                    hp as *mut f32,
                    n_i,
                )
                .result()
                .map_err(blas_err("cublasSsyrk (Hessian)"))?;
            }
        }
        self.mirror_upper_to_lower(h, dim)
    }

    pub(super) fn hessian_add_16(
        &self,
        x: &CudaBuf<u16>,
        half: crate::backend::HalfKind,
        rows: usize,
        h: &mut CudaBuf<f32>,
        dim: usize,
        nsamples: usize,
    ) -> Result<()> {
        check_len("hessian_add_half", "x", x.len, rows * dim)?;
        check_len("hessian_add_half", "h", h.len, dim * dim)?;
        if rows == 0 || dim == 0 {
            return Ok(());
        }
        let total = (nsamples + rows) as f64;
        let beta = (nsamples as f64 / total) as f32;
        let alpha = (2.0 / total) as f32;
        let (n_i, k_i) = (int("hessian dim", dim)?, int("hessian rows", rows)?);
        let dt = match half {
            crate::backend::HalfKind::F16 => blas_sys::cudaDataType::CUDA_R_16F,
            crate::backend::HalfKind::BF16 => blas_sys::cudaDataType::CUDA_R_16BF,
        };
        // Column-major xc [dim, rows] (= row-major x); H = xc·xcᵀ. Only the blocks (I, J),
        // I >= J, of the column-major lower triangle (the row-major upper one) are computed,
        // in bands of `bs` rows: ~5/8 of the full product's work for 4 bands.
        let bands = if dim >= 8192 {
            4
        } else if dim >= 2048 {
            2
        } else {
            1
        };
        let bs = dim.div_ceil(bands).div_ceil(64) * 64;
        let (xp, _gx) = x.slice.device_ptr(&self.stream);
        let (hp, _gh) = h.slice.device_ptr_mut(&self.stream);
        let (esz, fsz) = (2u64, 4u64);
        for i0 in (0..dim).step_by(bs) {
            let mi = int("hessian band", bs.min(dim - i0))?;
            for j0 in (0..=i0).step_by(bs) {
                let nj = int("hessian band", bs.min(dim - j0))?;
                let a = xp + i0 as u64 * esz;
                let b = xp + j0 as u64 * esz;
                let c = hp + (i0 + j0 * dim) as u64 * fsz;
                // SAFETY: the bands stay inside x ([rows, dim]) and h ([dim, dim]); types as
                // `dt` and CUDA_R_32F; the handle is bound to our stream.
                unsafe {
                    cudarc::cublas::result::gemm_ex(
                        *self.blas.handle(),
                        blas_sys::cublasOperation_t::CUBLAS_OP_N,
                        blas_sys::cublasOperation_t::CUBLAS_OP_T,
                        mi,
                        nj,
                        k_i,
                        &alpha as *const f32 as *const _,
                        a as *const _,
                        dt,
                        n_i,
                        b as *const _,
                        dt,
                        n_i,
                        &beta as *const f32 as *const _,
                        c as *mut _,
                        blas_sys::cudaDataType::CUDA_R_32F,
                        n_i,
                        blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                        blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                    )
                    .map_err(blas_err("cublasGemmEx (Hessian, 16-bit)"))?;
                }
            }
        }
        drop((_gx, _gh));
        // The row-major lower triangle is the upper one mirrored (exactly symmetric, as SSYRK).
        self.mirror_upper_to_lower(h, dim)
    }

    pub(super) fn inverse_factor(
        &self,
        h: &CudaBuf<f32>,
        dim: usize,
        plan: &SweepPlan,
        damp: f64,
        name: &str,
    ) -> Result<InverseFactor<Self>> {
        check_len("gptq_inverse_factor", "h", h.len, dim * dim)?;
        check_len("gptq_inverse_factor", "plan", plan.perm.len(), dim)?;
        if dim == 0 {
            return Err(runner_err("gptq_inverse_factor: empty Hessian"));
        }
        let solver = self.solver_handle()?;
        let n_i = int("hessian dim", dim)?;
        let n_u = as_u32("hessian dim", dim)?;
        let perm: Vec<u32> = plan.perm.iter().map(|&p| p as u32).collect();
        let perm = self.upload(&perm)?;
        let dead: Vec<u8> = plan.dead.iter().map(|&d| d as u8).collect();
        let dead = self.upload(&dead)?;
        let mut a = self.scratch::<f64>(dim * dim)?;
        let mut info = self.zeros::<i32>(1)?;
        let uplo = sol_sys::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER;

        let mut lwork: i32 = 0;
        {
            let (ap, _ga) = a.slice.device_ptr_mut(&self.stream);
            // SAFETY: a holds dim x dim doubles; only the size is computed.
            sol("cusolverDnDpotrf_bufferSize", unsafe {
                sol_sys::cusolverDnDpotrf_bufferSize(
                    solver.cu(),
                    uplo,
                    n_i,
                    ap as *mut f64,
                    n_i,
                    &mut lwork,
                )
            })?;
        }
        let mut work = self.scratch::<f64>((lwork.max(1)) as usize)?;
        let (mut trtri_dev, mut trtri_host) = (0usize, 0usize);
        {
            let (ap, _ga) = a.slice.device_ptr_mut(&self.stream);
            // SAFETY: as above.
            sol("cusolverDnXtrtri_bufferSize", unsafe {
                sol_sys::cusolverDnXtrtri_bufferSize(
                    solver.cu(),
                    uplo,
                    sol_sys::cublasDiagType_t::CUBLAS_DIAG_NON_UNIT,
                    dim as i64,
                    sol_sys::cudaDataType::CUDA_R_64F,
                    ap as *mut std::ffi::c_void,
                    dim as i64,
                    &mut trtri_dev,
                    &mut trtri_host,
                )
            })?;
        }
        let mut trtri_work = self.scratch::<u8>(trtri_dev.max(1))?;
        let mut trtri_host_work = vec![0u8; trtri_host.max(1)];
        let flip = self.func(&compile::GPTQ_SOLVE, "gq_damped_flipped")?;
        let to_u = self.func(&compile::GPTQ_SOLVE, "gq_upper_from_flipped_inverse")?;

        let (u, damp_used, retries) = with_damping_retries(name, damp, plan, |lambda| {
            let mut b = self.stream.launch_builder(&flip);
            b.arg(&h.slice)
                .arg(&perm.slice)
                .arg(&dead.slice)
                .arg(&mut a.slice)
                .arg(&n_u)
                .arg(&lambda);
            // SAFETY: matches gq_damped_flipped; every buffer holds what n implies.
            unsafe { b.launch(grid_1d((dim * dim) as u64, 256)?) }
                .map_err(Self::launch_err("gq_damped_flipped"))?;
            {
                let (ap, _ga) = a.slice.device_ptr_mut(&self.stream);
                let (wp, _gw) = work.slice.device_ptr_mut(&self.stream);
                let (ip, _gi) = info.slice.device_ptr_mut(&self.stream);
                // SAFETY: a is dim x dim (column-major = row-major, symmetric), work holds
                // lwork doubles, info one int; the handle is bound to our stream.
                sol("cusolverDnDpotrf", unsafe {
                    sol_sys::cusolverDnDpotrf(
                        solver.cu(),
                        uplo,
                        n_i,
                        ap as *mut f64,
                        n_i,
                        wp as *mut f64,
                        lwork,
                        ip as *mut i32,
                    )
                })?;
            }
            let bad = self.read_one(&info, 0)?;
            if bad > 0 {
                // The leading minor of order `bad` is not positive definite: pivot bad - 1.
                return Ok(Err(bad as usize - 1));
            }
            if bad < 0 {
                return Err(Error::cuda(format!(
                    "cusolverDnDpotrf: parameter {} is invalid",
                    -bad
                )));
            }
            {
                let (ap, _ga) = a.slice.device_ptr_mut(&self.stream);
                let (wp, _gw) = trtri_work.slice.device_ptr_mut(&self.stream);
                let (ip, _gi) = info.slice.device_ptr_mut(&self.stream);
                // SAFETY: workspaces of the sizes cuSOLVER asked for; a holds L.
                sol("cusolverDnXtrtri", unsafe {
                    sol_sys::cusolverDnXtrtri(
                        solver.cu(),
                        uplo,
                        sol_sys::cublasDiagType_t::CUBLAS_DIAG_NON_UNIT,
                        dim as i64,
                        sol_sys::cudaDataType::CUDA_R_64F,
                        ap as *mut std::ffi::c_void,
                        dim as i64,
                        wp as *mut std::ffi::c_void,
                        trtri_dev,
                        trtri_host_work.as_mut_ptr() as *mut std::ffi::c_void,
                        trtri_host,
                        ip as *mut i32,
                    )
                })?;
            }
            let bad = self.read_one(&info, 0)?;
            if bad > 0 {
                // A zero diagonal in L (cannot happen after a successful potrf, but
                // treated like a failed pivot).
                return Ok(Err(bad as usize - 1));
            }
            let mut u = self.scratch::<f32>(dim * dim)?;
            let mut b = self.stream.launch_builder(&to_u);
            b.arg(&a.slice).arg(&mut u.slice).arg(&n_u);
            // SAFETY: matches gq_upper_from_flipped_inverse.
            unsafe { b.launch(grid_1d((dim * dim) as u64, 256)?) }
                .map_err(Self::launch_err("gq_upper_from_flipped_inverse"))?;
            Ok(Ok(u))
        })?;
        Ok(InverseFactor {
            u,
            damp_used,
            retries,
        })
    }

    /// The inverse factor of a Hessian, reused across the linears that share it (q/k/v,
    /// gate/up): kept while the same `BackendHessian` version, plan and damping come back;
    /// only for Hessians up to 8192 wide (a 14336-wide factor is 0.8 GB and has no sharer).
    fn shared_factor(
        &self,
        version: Option<u64>,
        plan: &SweepPlan,
        damp: f64,
        compute: impl FnOnce() -> Result<InverseFactor<Self>>,
    ) -> Result<Arc<InverseFactor<Self>>> {
        let dim = plan.perm.len();
        let Some(version) = version.filter(|_| dim <= 8192) else {
            return Ok(Arc::new(compute()?));
        };
        let key = FactorKey {
            version,
            perm: plan.perm.clone(),
            dead: plan.dead.clone(),
            damp: damp.to_bits(),
        };
        let mut slot = self
            .factor_cache
            .lock()
            .map_err(|_| Error::cuda("factor cache poisoned by an earlier panic"))?;
        if let Some((k, f)) = slot.as_ref() {
            if *k == key {
                return Ok(f.clone());
            }
        }
        *slot = None; // free the old factor before computing the new one
        let f = Arc::new(compute()?);
        *slot = Some((key, f.clone()));
        Ok(f)
    }

    /// The GPTQ sweep on the device up to the levels (sweep order) and group parameters:
    /// shared by `gptq_solve` (host result) and `solve_linear` (device-resident). The weight
    /// comes from `w16` (widened and permuted on the device) when given, else from the host.
    fn sweep(
        &self,
        w: &Weight<'_>,
        w16: Option<(&CudaBuf<u16>, HalfKind)>,
        (h, h_version): (&CudaBuf<f32>, Option<u64>),
        nsamples: usize,
        cfg: &GptqConfig,
    ) -> Result<Sweep> {
        let t_checks = std::time::Instant::now();
        let (n_out, k) = (w.out_features, w.in_features);
        let name = w.name;
        // A device-resident weight (`w16`) was read from the checkpoint, which the layer loop
        // checked for NaN/Inf already; a host weight is scanned here.
        if w16.is_some() {
            check_solver_shapes(w, k, h.len, nsamples, cfg)?;
        } else {
            check_solver_inputs(w, k, h.len, nsamples, cfg)?;
        }
        if cfg.block_size > MAX_BLOCK {
            return Err(Error::tensor(
                name,
                format!(
                    "GPTQ block size {} is wider than the GPU sweep's {MAX_BLOCK} columns",
                    cfg.block_size
                ),
            ));
        }
        let store = match w.scale_dtype {
            DType::F16 => 0u32,
            DType::BF16 => 1,
            DType::F32 => 2,
            DType::I32 => return Err(Error::tensor(name, "scales cannot be stored as I32")),
        };
        let s = cfg.scheme;
        let n_u = as_u32("in_features", k)?;
        // Device parts are timed up to a synchronize (manifest phases).
        let mut phases: Vec<(&'static str, f64)> =
            vec![("solve: host checks", t_checks.elapsed().as_secs_f64())];
        let mut mark = std::time::Instant::now();
        let mut lap = |phase: &'static str, this: &Self| -> Result<()> {
            drv("synchronize", this.stream.synchronize())?;
            let now = std::time::Instant::now();
            phases.push((phase, (now - mark).as_secs_f64()));
            mark = now;
            Ok(())
        };

        // Non-finite Hessian entries: the first one, as the CPU reports it.
        let mut first = self.upload(&[u32::MAX])?;
        {
            let f = self.func(&compile::GPTQ_SOLVE, "gq_first_nonfinite_f32")?;
            let len = h.len as u64;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&h.slice).arg(&len).arg(&mut first.slice);
            // SAFETY: matches gq_first_nonfinite_f32.
            unsafe { b.launch(grid_1d(len, 256)?) }
                .map_err(Self::launch_err("gq_first_nonfinite_f32"))?;
        }
        let first = self.read_one(&first, 0)?;
        if first != u32::MAX {
            let i = first as usize;
            return Err(non_finite_hessian(name, self.read_one(h, i)? as f64, i, k));
        }

        let mut diag = self.scratch::<f32>(k)?;
        {
            let f = self.func(&compile::GPTQ_SOLVE, "gq_diag_f32")?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&h.slice).arg(&mut diag.slice).arg(&n_u);
            // SAFETY: matches gq_diag_f32.
            unsafe { b.launch(grid_1d(k as u64, 256)?) }
                .map_err(Self::launch_err("gq_diag_f32"))?;
        }
        let diag: Vec<f64> = self.download(&diag)?.iter().map(|&v| v as f64).collect();
        let plan = SweepPlan::new(&diag, cfg);
        let factor = self.shared_factor(h_version, &plan, cfg.damp, || {
            self.inverse_factor(h, k, &plan, cfg.damp, name)
        })?;
        lap("solve: factor (gpu)", self)?;

        let dynamic = plan.dynamic_groups(cfg);
        let col_group = plan.column_groups(cfg);
        let groups = s.num_groups(k);
        let glen = s.group_len(k);
        let mut scales = self.zeros::<f32>(groups * n_out)?;
        let mut zeros = self.zeros::<u32>(groups * n_out)?;
        let mut wp = match w16 {
            Some((w16, half)) => {
                check_len("gptq sweep", "w16", w16.len, n_out * k)?;
                let perm: Vec<u32> = plan.perm.iter().map(|&p| p as u32).collect();
                let perm = self.upload(&perm)?;
                let dead: Vec<u8> = plan.dead.iter().map(|&d| d as u8).collect();
                let dead = self.upload(&dead)?;
                let mut wp = self.scratch::<f32>(n_out * k)?;
                let f = self.func(&compile::GPTQ_SOLVE, "gq_sweep_weight_from_half")?;
                let (kind, n_o) = (half.code(), as_u32("out_features", n_out)?);
                let mut b = self.stream.launch_builder(&f);
                b.arg(&w16.slice)
                    .arg(&kind)
                    .arg(&perm.slice)
                    .arg(&dead.slice)
                    .arg(&mut wp.slice)
                    .arg(&n_o)
                    .arg(&n_u);
                // SAFETY: matches gq_sweep_weight_from_half; w16 and wp hold n_out x k.
                unsafe { b.launch(grid_1d((n_out * k) as u64, 256)?) }
                    .map_err(Self::launch_err("gq_sweep_weight_from_half"))?;
                wp
            }
            None => self.upload(&crate::quant::gptq::sweep_order_weight(w, &plan))?,
        };
        let cg: Vec<u32> = col_group.iter().map(|&g| g as u32).collect();
        let cg = self.upload(&cg)?;
        let mut q = self.zeros::<u8>(n_out * k)?;
        let mut err = self.zeros::<f32>(n_out * MAX_BLOCK)?;
        let mut row_loss = self.zeros::<f64>(n_out)?;
        let mut overflow = self.zeros::<u32>(1)?;
        lap("solve: weight upload", self)?;
        if !dynamic {
            // Up-front groups (static groups, per-channel grids): gptq.rs up_front_params on
            // the device, from the sweep-order weight put back in column order.
            self.fit_groups_up_front(
                &wp,
                &plan.perm,
                (n_out, k),
                &s,
                store,
                cfg.grid_fit,
                &mut scales,
                &mut zeros,
                &mut overflow,
            )?;
            lap("solve: up-front group fit", self)?;
        }

        let sweep = self.func(&compile::GPTQ_SOLVE, "gq_sweep_block")?;
        let rows_per_block = 4usize;
        let cfg_launch = LaunchConfig {
            grid_dim: (as_u32("row blocks", n_out.div_ceil(rows_per_block))?, 1, 1),
            block_dim: ((rows_per_block * 32) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n_out_u, gl, bits, sym, dyn_u) = (
            as_u32("out_features", n_out)?,
            as_u32("group_len", glen)?,
            s.bits as u32,
            s.sym as u32,
            dynamic as u32,
        );
        let clip_u = (cfg.grid_fit == GridFit::ClipSearch) as u32;
        let bs = cfg.block_size;
        for i1 in (0..k).step_by(bs) {
            let i2 = (i1 + bs).min(k);
            let (i1_u, cnt_u) = (i1 as u32, (i2 - i1) as u32);
            let mut b = self.stream.launch_builder(&sweep);
            b.arg(&wp.slice)
                .arg(&factor.u.slice)
                .arg(&mut q.slice)
                .arg(&mut err.slice)
                .arg(&mut scales.slice)
                .arg(&mut zeros.slice)
                .arg(&cg.slice)
                .arg(&mut row_loss.slice)
                .arg(&mut overflow.slice)
                .arg(&n_out_u)
                .arg(&n_u)
                .arg(&i1_u)
                .arg(&cnt_u)
                .arg(&gl)
                .arg(&bits)
                .arg(&sym)
                .arg(&store)
                .arg(&dyn_u)
                .arg(&clip_u);
            // SAFETY: matches gq_sweep_block (one warp per row, cnt <= 128); buffer sizes as
            // allocated above.
            unsafe { b.launch(cfg_launch) }.map_err(Self::launch_err("gq_sweep_block"))?;
            if i2 < k {
                // W[:, i2:] -= Err[:, :cnt] · U[i1:i2, i2:], row-major; column-major that is
                // C'[k-i2, n_out] -= A'[k-i2, cnt] · B'[cnt, n_out] with A' = U's block rows
                // (ld k) and B' = Err (ld MAX_BLOCK).
                let (alpha, beta) = (-1.0f32, 1.0f32);
                let (up, _gu) = factor.u.slice.device_ptr(&self.stream);
                let (ep, _ge) = err.slice.device_ptr(&self.stream);
                let (wptr, _gw) = wp.slice.device_ptr_mut(&self.stream);
                let fsz = std::mem::size_of::<f32>() as u64;
                let a_ptr = up + ((i1 * k + i2) as u64) * fsz;
                let c_ptr = wptr + (i2 as u64) * fsz;
                // SAFETY: the offsets stay inside U ([k, k]) and W ([n_out, k]); Err holds
                // n_out x MAX_BLOCK floats; the handle is bound to our stream.
                unsafe {
                    cudarc::cublas::result::sgemm(
                        *self.blas.handle(),
                        blas_sys::cublasOperation_t::CUBLAS_OP_N,
                        blas_sys::cublasOperation_t::CUBLAS_OP_N,
                        int("trailing columns", k - i2)?,
                        int("out_features", n_out)?,
                        int("block columns", i2 - i1)?,
                        &alpha,
                        a_ptr as *const f32,
                        int("in_features", k)?,
                        ep as *const f32,
                        MAX_BLOCK as i32,
                        &beta,
                        c_ptr as *mut f32,
                        int("in_features", k)?,
                    )
                    .map_err(blas_err("cublasSgemm (GPTQ trailing update)"))?;
                }
            }
        }
        lap("solve: sweep (gpu)", self)?;
        let overflow = self.read_one(&overflow, 0)? != 0;
        let loss: f64 = self.download(&row_loss)?.iter().sum::<f64>() / 2.0;
        Ok(Sweep {
            q,
            scales,
            zeros,
            plan,
            col_group,
            damp_used: factor.damp_used,
            retries: factor.retries,
            loss,
            overflow,
            phases,
        })
    }

    pub(super) fn gptq_solve(
        &self,
        w: &Weight<'_>,
        h: &CudaBuf<f32>,
        nsamples: usize,
        cfg: &GptqConfig,
    ) -> Result<GptqOutcome> {
        let sw = self.sweep(w, None, (h, None), nsamples, cfg)?;
        if sw.overflow {
            // A group scale overflows the store dtype: the CPU solver names it.
            let hess = Hessian::from_f32(w.in_features, &self.download(h)?, nsamples);
            return gptq_quantize(w, &hess, cfg);
        }
        let q = self.download(&sw.q)?;
        let linear = assemble(
            &cfg.scheme,
            w.out_features,
            &sw.plan,
            &sw.col_group,
            &q,
            self.download(&sw.scales)?,
            self.download(&sw.zeros)?,
        );
        Ok(GptqOutcome {
            linear,
            damp_used: sw.damp_used,
            retries: sw.retries,
            loss: sw.loss,
            phases: sw.phases,
        })
    }

    /// `Backend::gptq_linear` on the device: the sweep reads the 16-bit weight already there
    /// (when it is exact), the levels are packed and dequantized there, RTN and the output and
    /// weight errors are computed there; only qweight and the group parameters come back.
    /// The same values as `gptq_linear_on_host` over this backend's `gptq_quantize`.
    pub(super) fn solve_linear(&self, job: &LinearJob<'_, Self>) -> Result<SolvedLinear<Self>> {
        let w = job.weight;
        let (n_out, k) = (w.out_features, w.in_features);
        let s = job.cfg.scheme;
        check_len("gptq_linear", "w16", job.w16.len, n_out * k)?;
        let src16 = job.exact16.then_some((job.w16, job.half));
        let sw = self.sweep(w, src16, (job.h, job.h_version), job.nsamples, job.cfg)?;
        if sw.overflow {
            // The CPU solver names the overflowing scale.
            return crate::backend::gptq_linear_on_host(self, job);
        }
        let t = std::time::Instant::now();
        let mut phases = sw.phases;
        let (n_u, k_u) = (as_u32("out_features", n_out)?, as_u32("in_features", k)?);
        let groups = s.num_groups(k);
        let glen = s.group_len(k);
        // Column c of the original order sits at sweep position inv[c].
        let mut inv = vec![0u32; k];
        for (i, &c) in sw.plan.perm.iter().enumerate() {
            inv[c] = i as u32;
        }
        let mut g_idx = vec![0u32; k];
        for (i, &c) in sw.plan.perm.iter().enumerate() {
            g_idx[c] = sw.col_group[i] as u32;
        }
        let identity = sw.plan.perm.iter().enumerate().all(|(i, &c)| i == c);
        let inv_d = self.upload(&inv)?;
        let g_d = self.upload(&g_idx)?;

        // qweight on the device; the group tensors on the host (small).
        let pf = s.pack_factor();
        let mut qweight = self.scratch::<i32>(k / pf * n_out)?;
        {
            let f = self.func(&compile::GPTQ_SOLVE, "gq_pack_qweight")?;
            let bits = s.bits as u32;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&sw.q.slice);
            if identity {
                b.arg(&0u64);
            } else {
                b.arg(&inv_d.slice);
            }
            b.arg(&mut qweight.slice).arg(&n_u).arg(&k_u).arg(&bits);
            // SAFETY: matches gq_pack_qweight (a null col_src means identity); q is
            // [n_out, k], qweight [k / pf, n_out].
            unsafe { b.launch(grid_1d((k / pf * n_out) as u64, 256)?) }
                .map_err(Self::launch_err("gq_pack_qweight"))?;
        }
        let scales = self.download(&sw.scales)?;
        let zeros = self.download(&sw.zeros)?;
        let (qzeros, scale_bytes, g_idx_i32) = crate::export::gptq_v1::pack_group_params(
            &s,
            n_out,
            groups,
            &scales,
            &zeros,
            &g_idx,
            w.scale_dtype,
        );
        let packed = crate::export::gptq_v1::PackedGptq {
            qweight: self.download(&qweight)?,
            qzeros,
            scales: scale_bytes,
            g_idx: g_idx_i32,
        };
        drop(qweight);
        phases.push(("pack", t.elapsed().as_secs_f64()));

        // The loader's weight: scales as stored (the sweep kept them rounded to the store
        // dtype), zeros as v1 reads them back (never 0 by the grid rule), in f32 and in 16 bits.
        let t = std::time::Instant::now();
        let mut deq = self.scratch::<f32>(n_out * k)?;
        let mut deq16 = self.scratch::<u16>(n_out * k)?;
        self.dequant_levels(
            &sw.q,
            (!identity).then_some(&inv_d),
            &sw.scales,
            &sw.zeros,
            Some(&g_d),
            glen,
            &mut deq,
            Some((&mut deq16, job.half)),
            n_out,
            k,
        )?;
        drop(sw.q);
        drv("synchronize", self.stream.synchronize())?;
        phases.push(("dequantize", t.elapsed().as_secs_f64()));

        // The original weight in f32 on the device.
        let t = std::time::Instant::now();
        let wf = if job.exact16 {
            let mut wf = self.scratch::<f32>(n_out * k)?;
            self.widen_half(job.w16, job.half, &mut wf)?;
            wf
        } else {
            self.upload(w.data)?
        };
        let error = self.weight_error(&wf, &deq)?;
        drv("synchronize", self.stream.synchronize())?;
        phases.push(("stats: weight error", t.elapsed().as_secs_f64()));

        let t = std::time::Instant::now();
        let den = self.quad(&wf, n_out, job.h, k)?;
        self.sub_in_place(&mut deq, &wf, true)?; // deq <- W - deq
        let num_gptq = self.quad(&deq, n_out, job.h, k)?;
        phases.push(("stats: output error", t.elapsed().as_secs_f64()));

        // RTN on the same weight, on the device (byte-identical to the CPU's rtn.rs).
        let t = std::time::Instant::now();
        let rtn = self.rtn_levels(&s, w, &wf)?;
        let num_rtn = match rtn {
            Some((rq, rs, rz)) => {
                self.dequant_levels(&rq, None, &rs, &rz, None, glen, &mut deq, None, n_out, k)?;
                self.sub_in_place(&mut deq, &wf, true)?;
                self.quad(&deq, n_out, job.h, k)?
            }
            None => {
                // A scale overflowed the store dtype on the RTN grid: the host path reports it.
                let rtn = self.quantize_rtn(&s, w)?.dequantize();
                let errs = self.output_errors(w.data, &[&rtn], job.h, k)?;
                errs[0] * den
            }
        };
        phases.push(("stats: rtn", t.elapsed().as_secs_f64()));
        let rel = |num: f64| crate::quant::gptq::relative_output_error(num, den);
        Ok(SolvedLinear {
            packed,
            deq16,
            error,
            output_err_sq: rel(num_gptq),
            rtn_output_err_sq: rel(num_rtn),
            damp_used: sw.damp_used,
            retries: sw.retries,
            loss: sw.loss,
            phases,
        })
    }

    /// `gq_dequant_levels`: out (and out16) from levels and group parameters.
    #[allow(clippy::too_many_arguments)]
    fn dequant_levels(
        &self,
        q: &CudaBuf<u8>,
        col_src: Option<&CudaBuf<u32>>,
        scales: &CudaBuf<f32>,
        zeros: &CudaBuf<u32>,
        g_of_col: Option<&CudaBuf<u32>>,
        glen: usize,
        out: &mut CudaBuf<f32>,
        out16: Option<(&mut CudaBuf<u16>, HalfKind)>,
        n_out: usize,
        k: usize,
    ) -> Result<()> {
        check_len("dequantize levels", "q", q.len, n_out * k)?;
        check_len("dequantize levels", "out", out.len, n_out * k)?;
        if n_out * k == 0 {
            return Ok(());
        }
        let f = self.func(&compile::GPTQ_SOLVE, "gq_dequant_levels")?;
        let (n_u, k_u, gl) = (
            as_u32("out_features", n_out)?,
            as_u32("in_features", k)?,
            as_u32("group_len", glen)?,
        );
        let kind = out16.as_ref().map_or(0, |o| o.1.code());
        let null = 0u64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&q.slice);
        match col_src {
            Some(c) => b.arg(&c.slice),
            None => b.arg(&null),
        };
        b.arg(&scales.slice).arg(&zeros.slice);
        match g_of_col {
            Some(g) => b.arg(&g.slice),
            None => b.arg(&null),
        };
        b.arg(&gl).arg(&mut out.slice);
        let mut o16 = out16;
        match o16.as_mut() {
            Some((o, _)) => {
                check_len("dequantize levels", "out16", o.len, n_out * k)?;
                b.arg(&mut o.slice)
            }
            None => b.arg(&null),
        };
        b.arg(&kind).arg(&n_u).arg(&k_u);
        // SAFETY: matches gq_dequant_levels (null pointers for the optional arguments); the
        // buffers hold n_out x k elements and the group tensors groups x n_out.
        unsafe { b.launch(grid_1d((n_out * k) as u64, 256)?) }
            .map_err(Self::launch_err("gq_dequant_levels"))?;
        Ok(())
    }

    /// a <- b - a (`from_b`) or a <- a - b.
    fn sub_in_place(&self, a: &mut CudaBuf<f32>, b_: &CudaBuf<f32>, from_b: bool) -> Result<()> {
        check_len("sub", "b", b_.len, a.len)?;
        if a.len == 0 {
            return Ok(());
        }
        let f = self.func(&compile::GPTQ_SOLVE, "gq_sub_in_place")?;
        let (n, flag) = (a.len as u64, from_b as u32);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut a.slice).arg(&b_.slice).arg(&n).arg(&flag);
        // SAFETY: matches gq_sub_in_place; equal lengths checked.
        unsafe { b.launch(grid_1d(n, 256)?) }.map_err(Self::launch_err("gq_sub_in_place"))?;
        Ok(())
    }

    /// `ErrorStats::between(w, d)` on the device (f64 partial sums per block, added in order
    /// on the host).
    fn weight_error(&self, w: &CudaBuf<f32>, d: &CudaBuf<f32>) -> Result<ErrorStats> {
        check_len("weight error", "d", d.len, w.len)?;
        const BLOCKS: usize = 1024;
        let mut err = self.zeros::<f64>(BLOCKS)?;
        let mut norm = self.zeros::<f64>(BLOCKS)?;
        let mut max_abs = self.zeros::<f64>(BLOCKS)?;
        if w.len > 0 {
            let f = self.func(&compile::GPTQ_SOLVE, "gq_error_partials")?;
            let n = w.len as u64;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&w.slice)
                .arg(&d.slice)
                .arg(&n)
                .arg(&mut err.slice)
                .arg(&mut norm.slice)
                .arg(&mut max_abs.slice);
            let cfg = LaunchConfig {
                grid_dim: (BLOCKS as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: matches gq_error_partials (256 threads, one partial per block).
            unsafe { b.launch(cfg) }.map_err(Self::launch_err("gq_error_partials"))?;
        }
        let e: f64 = self.download(&err)?.iter().sum();
        let s: f64 = self.download(&norm)?.iter().sum();
        let m = self.download(&max_abs)?.into_iter().fold(0f64, f64::max);
        Ok(ErrorStats {
            rel_fro: if s > 0.0 { (e / s).sqrt() } else { e.sqrt() },
            max_abs: m,
        })
    }

    pub(super) fn output_errors(
        &self,
        w: &[f32],
        candidates: &[&[f32]],
        h: &CudaBuf<f32>,
        dim: usize,
    ) -> Result<Vec<f64>> {
        use rayon::prelude::*;
        check_len("gptq_output_errors", "h", h.len, dim * dim)?;
        let n = crate::backend::rows_of("gptq_output_errors", "w", w.len(), dim)?;
        for c in candidates {
            check_len("gptq_output_errors", "candidate", c.len(), w.len())?;
        }
        if n == 0 {
            return Ok(vec![0.0; candidates.len()]);
        }
        let den = self.quad(&self.upload(w)?, n, h, dim)?;
        let mut out = Vec::with_capacity(candidates.len());
        for c in candidates {
            let diff: Vec<f32> = w.par_iter().zip(c.par_iter()).map(|(a, b)| a - b).collect();
            let num = self.quad(&self.upload(&diff)?, n, h, dim)?;
            out.push(crate::quant::gptq::relative_output_error(num, den));
        }
        Ok(out)
    }

    /// tr(M H Mᵀ) = Σ_rows dot(M[r], (M H)[r]) for M [n, dim] on the device: cuBLAS SGEMM for
    /// M H, a warp per row for the dots (f64), rows summed on the host in order.
    fn quad(&self, m: &CudaBuf<f32>, n: usize, h: &CudaBuf<f32>, dim: usize) -> Result<f64> {
        check_len("gptq_output_errors", "h", h.len, dim * dim)?;
        check_len("gptq_output_errors", "w", m.len, n * dim)?;
        if n == 0 || dim == 0 {
            return Ok(0.0);
        }
        let (k_i, n_i) = (int("in_features", dim)?, int("out_features", n)?);
        let mut mh = self.scratch::<f32>(n * dim)?;
        let mut sums = self.scratch::<f64>(n)?;
        let dots = self.func(&compile::GPTQ_SOLVE, "gq_row_dots")?;
        let (n_u, k_u) = (as_u32("out_features", n)?, as_u32("in_features", dim)?);
        {
            let (alpha, beta) = (1.0f32, 0.0f32);
            let (hp, _gh) = h.slice.device_ptr(&self.stream);
            let (mp, _gm) = m.slice.device_ptr(&self.stream);
            let (op, _go) = mh.slice.device_ptr_mut(&self.stream);
            // M H row-major is (H Mᵀ)ᵀ, i.e. column-major H·Mᵀ with H symmetric.
            // SAFETY: H is [dim, dim], M and MH are [n, dim]; handle on our stream.
            unsafe {
                cudarc::cublas::result::sgemm(
                    *self.blas.handle(),
                    blas_sys::cublasOperation_t::CUBLAS_OP_N,
                    blas_sys::cublasOperation_t::CUBLAS_OP_N,
                    k_i,
                    n_i,
                    k_i,
                    &alpha,
                    hp as *const f32,
                    k_i,
                    mp as *const f32,
                    k_i,
                    &beta,
                    op as *mut f32,
                    k_i,
                )
                .map_err(blas_err("cublasSgemm (output error)"))?;
            }
        }
        let mut b = self.stream.launch_builder(&dots);
        b.arg(&m.slice)
            .arg(&mh.slice)
            .arg(&mut sums.slice)
            .arg(&n_u)
            .arg(&k_u);
        let cfg = LaunchConfig {
            grid_dim: (as_u32("row blocks", n.div_ceil(4))?, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches gq_row_dots (one warp per row); sizes as allocated.
        unsafe { b.launch(cfg) }.map_err(Self::launch_err("gq_row_dots"))?;
        Ok(self.download(&sums)?.iter().sum())
    }
}

impl CudaBackend {
    /// `up_front_params` on the device (`gq_unpermute_cols`, then `gq_fit_groups`: one warp per
    /// row and group): scales/zeros [groups, n_out] of the column-order weight with dead columns
    /// zeroed; a stored scale that overflows sets `overflow` like the sweep does, and the CPU
    /// solver then names it.
    #[allow(clippy::too_many_arguments)]
    fn fit_groups_up_front(
        &self,
        wp: &CudaBuf<f32>,
        perm: &[usize],
        (n_out, k): (usize, usize),
        s: &QuantScheme,
        store: u32,
        fit: GridFit,
        scales: &mut CudaBuf<f32>,
        zeros: &mut CudaBuf<u32>,
        overflow: &mut CudaBuf<u32>,
    ) -> Result<()> {
        let perm: Vec<u32> = perm.iter().map(|&p| p as u32).collect();
        let perm = self.upload(&perm)?;
        let mut orig = self.scratch::<f32>(n_out * k)?;
        let (n_o, k_u) = (as_u32("out_features", n_out)?, as_u32("in_features", k)?);
        {
            let f = self.func(&compile::GPTQ_SOLVE, "gq_unpermute_cols")?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(&wp.slice)
                .arg(&perm.slice)
                .arg(&mut orig.slice)
                .arg(&n_o)
                .arg(&k_u);
            // SAFETY: matches gq_unpermute_cols; wp and orig hold n_out x k, perm k entries.
            unsafe { b.launch(grid_1d((n_out * k) as u64, 256)?) }
                .map_err(Self::launch_err("gq_unpermute_cols"))?;
        }
        let groups = s.num_groups(k);
        let (gl, ng) = (
            as_u32("group_len", s.group_len(k))?,
            as_u32("groups", groups)?,
        );
        let (bits, sym, clip) = (
            s.bits as u32,
            s.sym as u32,
            (fit == GridFit::ClipSearch) as u32,
        );
        let f = self.func(&compile::GPTQ_SOLVE, "gq_fit_groups")?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&orig.slice)
            .arg(&mut scales.slice)
            .arg(&mut zeros.slice)
            .arg(&mut overflow.slice)
            .arg(&n_o)
            .arg(&k_u)
            .arg(&gl)
            .arg(&ng)
            .arg(&bits)
            .arg(&sym)
            .arg(&store)
            .arg(&clip);
        // SAFETY: matches gq_fit_groups (one warp per row and group); scales/zeros hold
        // groups x n_out, orig n_out x k.
        unsafe { b.launch(grid_1d((n_out * groups * 32) as u64, 256)?) }
            .map_err(Self::launch_err("gq_fit_groups"))?;
        Ok(())
    }
}
