//! GPTQ: quantize a linear column by column, feeding each column's rounding error back into the
//! columns not yet quantized so the layer's *output* on the calibration inputs moves as little
//! as possible.
//!
//! Reimplemented from the paper (Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate
//! Post-Training Quantization for Generative Pre-trained Transformers", Algorithm 1) and the
//! behaviour of the reference `gptq.py` (`GPTQ.add_batch`, `GPTQ.fasterquant`, IST-DASLab/gptq;
//! `static_groups` as in AutoGPTQ):
//!
//! * H = 2/n Σ x xᵀ over the calibration rows, kept as a running average;
//! * dead inputs (H[i,i] = 0) get H[i,i] = 1 and a zero weight column;
//! * optional act-order: columns in order of descending diag(H);
//! * damping λ = damp · mean(diag H) on the diagonal; if the Cholesky fails, retry with 10×
//!   the damping (a few times);
//! * U = upper Cholesky factor of H⁻¹ (H⁻¹ = UᵀU);
//! * blocked sweep: inside a block of `block_size` columns every column is rounded and its
//!   error `(w - q) / U[i,i]` is spread over the rest of the block at once; the columns after the
//!   block get the whole block's errors in one GEMM at the block end (lazy batch updates);
//! * group parameters are fitted (with the shared min/max grid of `grid::GroupParams`) on the
//!   weights as they stand when the block holding the group's first column starts, like the
//!   reference; static groups are fitted up front on the original column order.
//!
//! Precision: H, the Cholesky and the triangular inverse are f64 (see [`Hessian`]); the sweep
//! runs in f32 like the reference. Everything parallel is split into fixed chunks whose results
//! are combined in a fixed order, so the output does not depend on the number of threads.
//!
//! Two deliberate differences from `gptq.py`: `nsamples` counts rows (tokens), not sequences
//! (H differs by a constant factor; the quantized weight does not, only `loss` scales), and the
//! per-channel grid (`group_size: -1`) is fitted after dead columns are zeroed.

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis, LinalgScalar};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::quant::grid::{GridFit, GroupParams};
use crate::quant::{QuantScheme, QuantizedLinear, Weight};

/// Rows per parallel GEMM task. Fixed, so the arithmetic does not depend on the thread count.
const PAR_ROWS: usize = 64;
/// Panel width of the blocked Cholesky and triangular inverse.
const CHOL_BLOCK: usize = 128;
/// Tile edge of the Hessian accumulation.
const HESS_TILE: usize = 256;
/// Rows multiplied in f32 before the partial product is added into the f64 Hessian.
const HESS_ROW_CHUNK: usize = 1024;
/// How many times the damping is multiplied by 10 after a failed Cholesky.
pub const MAX_DAMP_RETRIES: u32 = 4;

/// The layer-input Hessian H = 2/n Σ xxᵀ of one linear (shared by linears with the same input).
///
/// Stored in f64, row-major [dim, dim]: it is a running average over hundreds of thousands of
/// rows, and its Cholesky is the numerically fragile step of GPTQ (near-singular H from
/// low-rank or outlier-dominated activations is the norm in LLMs). f64 makes the accumulation
/// exact enough that the result does not depend on batch boundaries, and makes a Cholesky
/// failure mean "really not positive definite" rather than f32 round-off. The cost is
/// 8·dim² bytes (0.13 GiB at dim 4096, 1.5 GiB at 14336), acceptable on a CPU host where one
/// layer is processed at a time; the heavy products are still done in f32 (per row chunk) and
/// only summed in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct Hessian {
    pub dim: usize,
    pub h: Vec<f64>,
    /// Rows (tokens) accumulated so far.
    pub nsamples: usize,
}

impl Hessian {
    pub fn new(dim: usize) -> Self {
        Hessian {
            dim,
            h: vec![0.0; dim * dim],
            nsamples: 0,
        }
    }

    /// Adds `rows` input rows `x` ([rows, dim], row-major) with the reference's running-average
    /// update: H ← H·n/(n+m) + 2/(n+m)·XᵀX, n ← n+m.
    ///
    /// Parallel over tiles of H (only the upper triangle is multiplied, then mirrored); every
    /// tile sums its row chunks in order, so the result is the same for any thread count.
    pub fn add_batch(&mut self, x: &[f32], rows: usize) {
        let dim = self.dim;
        assert_eq!(
            x.len(),
            rows * dim,
            "Hessian::add_batch: {} values is not {rows} rows of {dim}",
            x.len()
        );
        assert_eq!(
            self.h.len(),
            dim * dim,
            "Hessian::add_batch: h is not dim x dim"
        );
        if rows == 0 || dim == 0 {
            return;
        }
        let total = self.nsamples + rows;
        let keep = self.nsamples as f64 / total as f64;
        let add = 2.0 / total as f64;
        let xv = ArrayView2::from_shape((rows, dim), x).expect("shape checked");
        let tiles = dim.div_ceil(HESS_TILE);
        self.h
            .par_chunks_mut(HESS_TILE * dim)
            .enumerate()
            .for_each(|(bi, band)| {
                let i0 = bi * HESS_TILE;
                let i1 = (i0 + HESS_TILE).min(dim);
                let products: Vec<Array2<f64>> = (bi..tiles)
                    .into_par_iter()
                    .map(|bj| {
                        let j0 = bj * HESS_TILE;
                        let j1 = (j0 + HESS_TILE).min(dim);
                        let mut acc = Array2::<f64>::zeros((i1 - i0, j1 - j0));
                        let mut part = Array2::<f32>::zeros((i1 - i0, j1 - j0));
                        for r0 in (0..rows).step_by(HESS_ROW_CHUNK) {
                            let r1 = (r0 + HESS_ROW_CHUNK).min(rows);
                            let a = xv.slice(s![r0..r1, i0..i1]);
                            let b = xv.slice(s![r0..r1, j0..j1]);
                            general_mat_mul(1.0, &a.t(), &b, 0.0, &mut part);
                            acc.zip_mut_with(&part, |a, &p| *a += p as f64);
                        }
                        acc
                    })
                    .collect();
                for (r, hrow) in band.chunks_mut(dim).enumerate() {
                    for (tile, bj) in products.iter().zip(bi..) {
                        let j0 = bj * HESS_TILE;
                        for (h, &v) in hrow[j0..].iter_mut().zip(tile.row(r)) {
                            *h = keep * *h + add * v;
                        }
                    }
                }
            });
        mirror_upper_to_lower(&mut self.h, dim);
        self.nsamples = total;
    }

    /// The Hessian of an f32 [dim, dim] matrix (a backend's), widened to f64.
    pub fn from_f32(dim: usize, h: &[f32], nsamples: usize) -> Self {
        Hessian {
            dim,
            h: h.par_iter().map(|&v| v as f64).collect(),
            nsamples,
        }
    }

    /// The matrix rounded to f32, as backends hold it.
    pub fn to_f32(&self) -> Vec<f32> {
        self.h.par_iter().map(|&v| v as f32).collect()
    }

    fn diag(&self, i: usize) -> f64 {
        self.h[i * self.dim + i]
    }
}

/// Copies the strictly upper triangle onto the lower one, in cache-sized blocks.
fn mirror_upper_to_lower(h: &mut [f64], dim: usize) {
    const B: usize = 64;
    for bi in (0..dim).step_by(B) {
        for bj in (0..=bi).step_by(B) {
            for i in bi..(bi + B).min(dim) {
                for j in bj..(bj + B).min(i) {
                    h[i * dim + j] = h[j * dim + i];
                }
            }
        }
    }
}

/// Column order of the sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActOrder {
    /// Columns in their stored order.
    #[default]
    None,
    /// Descending diag(H); groups are formed in that order, so `g_idx` is a permutation of
    /// the trivial one (`desc_act: true` in the GPTQ config).
    Permute,
    /// Descending diag(H), but groups are fitted up front on the original column order
    /// (AngelSlim / AutoGPTQ `static_groups`), so `g_idx` stays trivial (`desc_act: false`
    /// loaders read it correctly).
    StaticGroups,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GptqConfig {
    pub scheme: QuantScheme,
    /// Relative damping: λ = damp · mean(diag H). Default 0.01. After a failed Cholesky it is
    /// multiplied by 10 (0 becomes 1e-6), up to `MAX_DAMP_RETRIES` times.
    pub damp: f64,
    /// Columns per lazy-update block. Default 128.
    pub block_size: usize,
    pub act_order: ActOrder,
    /// Fit every group's parameters up front on the original weight (AutoGPTQ
    /// `static_groups`). Implied by `ActOrder::StaticGroups`; together with `ActOrder::Permute`
    /// it gives the same result as `StaticGroups` (trivial `g_idx`, as in AutoGPTQ).
    pub static_groups: bool,
    /// How each group's range is fitted (`--clip-search`: `GridFit::ClipSearch`).
    pub grid_fit: GridFit,
}

impl GptqConfig {
    pub fn new(scheme: QuantScheme) -> Self {
        GptqConfig {
            scheme,
            damp: 0.01,
            block_size: 128,
            act_order: ActOrder::None,
            static_groups: false,
            grid_fit: GridFit::MinMax,
        }
    }

    pub(crate) fn permutes(&self) -> bool {
        self.act_order != ActOrder::None
    }

    pub(crate) fn fits_up_front(&self) -> bool {
        self.static_groups || self.act_order == ActOrder::StaticGroups
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct GptqOutcome {
    /// In original column order.
    pub linear: QuantizedLinear,
    /// The relative damping the successful Cholesky used (`cfg.damp · 10^retries`).
    pub damp_used: f64,
    /// Failed Cholesky attempts before it.
    pub retries: u32,
    /// Σ (w - q)² / U[i,i]² / 2 over all weights, as the reference's `torch.sum(Losses)`.
    pub loss: f64,
    /// Parts of the solve's wall time a backend measured separately (manifest phases), e.g.
    /// the GPU's factorization and sweep; empty on the CPU.
    pub phases: Vec<(&'static str, f64)>,
}

/// Quantizes `w` ([out, in], HF layout) with GPTQ against the Hessian of its inputs.
pub fn gptq_quantize(w: &Weight<'_>, h: &Hessian, cfg: &GptqConfig) -> Result<GptqOutcome> {
    solve(w, h, cfg, false).map(|(outcome, _)| outcome)
}

/// The solver; with `keep_dequantized` it also returns the weight the sweep actually used for
/// each column (scale·(q - zero) as computed inside the sweep), in original column order.
fn solve(
    w: &Weight<'_>,
    h: &Hessian,
    cfg: &GptqConfig,
    keep_dequantized: bool,
) -> Result<(GptqOutcome, Option<Vec<f32>>)> {
    let s = cfg.scheme;
    let (n_out, k_in) = (w.out_features, w.in_features);
    let name = w.name;
    check_solver_inputs(w, h.dim, h.h.len(), h.nsamples, cfg)?;
    if let Some(i) = h.h.par_iter().position_first(|v| !v.is_finite()) {
        return Err(non_finite_hessian(name, h.h[i], i, k_in));
    }

    let k = k_in;
    let plan = SweepPlan::new(&(0..k).map(|i| h.diag(i)).collect::<Vec<_>>(), cfg);
    let (perm, dead) = (&plan.perm, &plan.dead);

    // U (upper, H⁻¹ = UᵀU) of the permuted, damped H; retry with more damping on failure.
    let (u, damp, retries) = with_damping_retries(name, cfg.damp, &plan, |lambda| {
        Ok(inverse_cholesky_upper(damped_flipped_hessian(
            h, perm, dead, lambda,
        )))
    })?;

    // Working weight in sweep order, dead columns zeroed.
    let mut wp =
        Array2::from_shape_vec((n_out, k), sweep_order_weight(w, &plan)).expect("n_out x k values");

    let glen = s.group_len(k);
    let groups = s.num_groups(k);
    let maxq = s.maxq();
    let dynamic = plan.dynamic_groups(cfg);
    let col_group = plan.column_groups(cfg);
    let mut params = if dynamic {
        let placeholder = GroupParams {
            scale: 0.0,
            zero: 0,
        };
        Array2::from_elem((n_out, groups), placeholder)
    } else {
        up_front_params(w, &plan, &s, cfg.grid_fit)?
    };

    let bs = cfg.block_size;
    let mut qp = Array2::<u8>::zeros((n_out, k));
    let mut err = Array2::<f32>::zeros((n_out, bs.min(k)));
    let mut row_loss = vec![0f64; n_out];
    let mut wq = Array2::<f32>::zeros((n_out, if keep_dequantized { k } else { 0 }));
    for i1 in (0..k).step_by(bs) {
        let i2 = (i1 + bs).min(k);
        let cnt = i2 - i1;
        wp.axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(qp.axis_iter_mut(Axis(0)))
            .zip(err.axis_iter_mut(Axis(0)))
            .zip(params.axis_iter_mut(Axis(0)))
            .zip(row_loss.par_iter_mut())
            .zip(wq.axis_iter_mut(Axis(0)))
            .try_for_each(
                |(((((wrow, mut qrow), mut erow), mut prow), loss), mut wqrow)| -> Result<()> {
                    let wrow = wrow.as_slice().expect("standard layout");
                    // The block's columns as updated so far; `wrow` keeps the block-start values
                    // that dynamic groups are fitted on (as in the reference).
                    let mut w1 = wrow[i1..i2].to_vec();
                    for i in 0..cnt {
                        let j = i1 + i;
                        if dynamic && j % glen == 0 {
                            let end = (j + glen).min(k);
                            prow[j / glen] = GroupParams::fit_with(
                                &wrow[j..end],
                                &s,
                                w.scale_dtype,
                                name,
                                cfg.grid_fit,
                            )?;
                        }
                        let p = prow[col_group[j]];
                        let x = w1[i];
                        let level = p.quantize(x, maxq);
                        let dq = p.dequantize(level);
                        let urow = u.row(j);
                        let urow = urow.as_slice().expect("standard layout");
                        let d = urow[j];
                        let e = (x - dq) / d;
                        *loss += ((x - dq) as f64 / d as f64).powi(2);
                        qrow[j] = level as u8;
                        erow[i] = e;
                        if keep_dequantized {
                            wqrow[j] = dq;
                        }
                        for (wv, &uv) in w1[i + 1..].iter_mut().zip(&urow[j + 1..i2]) {
                            *wv -= e * uv;
                        }
                    }
                    Ok(())
                },
            )?;
        if i2 < k {
            par_gemm(
                -1.0,
                err.slice(s![.., ..cnt]),
                u.slice(s![i1..i2, i2..]),
                1.0,
                wp.slice_mut(s![.., i2..]),
            );
        }
    }
    drop(wp);
    drop(u);

    let mut scales = vec![0f32; groups * n_out];
    let mut zeros = vec![0u32; groups * n_out];
    for ((n, g), p) in params.indexed_iter() {
        scales[g * n_out + n] = p.scale;
        zeros[g * n_out + n] = p.zero;
    }
    let linear = assemble(
        &s,
        n_out,
        &plan,
        &col_group,
        qp.as_slice().expect("standard layout"),
        scales,
        zeros,
    );
    let dequantized = keep_dequantized.then(|| {
        let mut out = vec![0f32; n_out * k];
        for (dst, src) in out.chunks_mut(k).zip(wq.axis_iter(Axis(0))) {
            for (i, &v) in src.iter().enumerate() {
                dst[perm[i]] = v;
            }
        }
        out
    });
    let outcome = GptqOutcome {
        linear,
        damp_used: damp,
        retries,
        loss: row_loss.iter().sum::<f64>() / 2.0,
        phases: Vec::new(),
    };
    Ok((outcome, dequantized))
}

/// What the solver derives from diag(H) alone, shared by every backend: dead inputs, the
/// sweep order and the damping scale.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepPlan {
    /// Input columns with H[i,i] = 0 (zero weight column, H[i,i] treated as 1).
    pub dead: Vec<bool>,
    /// perm[i] = original column at sweep position i. Stable: ties keep their stored order.
    pub perm: Vec<usize>,
    /// mean(diag H) with dead diagonals counted as 1: λ = damp · mean_diag.
    pub mean_diag: f64,
}

impl SweepPlan {
    pub fn new(diag_h: &[f64], cfg: &GptqConfig) -> Self {
        let k = diag_h.len();
        let dead: Vec<bool> = diag_h.iter().map(|&d| d == 0.0).collect();
        let diag: Vec<f64> = diag_h
            .iter()
            .zip(&dead)
            .map(|(&d, &dd)| if dd { 1.0 } else { d })
            .collect();
        let mut perm: Vec<usize> = (0..k).collect();
        if cfg.permutes() {
            perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]));
        }
        let mean_diag = diag.iter().sum::<f64>() / k.max(1) as f64;
        SweepPlan {
            dead,
            perm,
            mean_diag,
        }
    }

    /// Groups fitted during the sweep (when their first column is reached), not up front.
    pub fn dynamic_groups(&self, cfg: &GptqConfig) -> bool {
        cfg.scheme.group_size.is_some() && !cfg.fits_up_front()
    }

    /// Group of each sweep position: up-front groups follow the original column order.
    pub fn column_groups(&self, cfg: &GptqConfig) -> Vec<usize> {
        let glen = cfg.scheme.group_len(self.perm.len());
        let dynamic = self.dynamic_groups(cfg);
        (0..self.perm.len())
            .map(|i| {
                if dynamic {
                    i / glen
                } else {
                    self.perm[i] / glen
                }
            })
            .collect()
    }
}

/// num / den for the output-error ratio tr(ΔHΔᵀ) / tr(WHWᵀ), with a zero denominator
/// (a zero weight, or no signal) giving 0 for a zero numerator and infinity otherwise.
pub fn relative_output_error(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else if num == 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// Shape, settings and weight checks every backend's solver makes before any work.
pub fn check_solver_inputs(
    w: &Weight<'_>,
    h_dim: usize,
    h_len: usize,
    nsamples: usize,
    cfg: &GptqConfig,
) -> Result<()> {
    check_solver_inputs_impl(w, h_dim, h_len, nsamples, cfg)?;
    check_weight_finite(w)
}

fn check_solver_inputs_impl(
    w: &Weight<'_>,
    h_dim: usize,
    h_len: usize,
    nsamples: usize,
    cfg: &GptqConfig,
) -> Result<()> {
    let (n_out, k_in, name) = (w.out_features, w.in_features, w.name);
    cfg.scheme.check_shape(name, n_out, k_in)?;
    if n_out == 0 || k_in == 0 {
        return Err(Error::tensor(name, "weight is empty"));
    }
    if w.data.len() != n_out * k_in {
        return Err(Error::tensor(
            name,
            format!(
                "weight has {} values, expected [{n_out}, {k_in}]",
                w.data.len()
            ),
        ));
    }
    if h_dim != k_in || h_len != k_in * k_in {
        return Err(Error::tensor(
            name,
            format!(
                "Hessian is {h_dim}x{h_dim} ({h_len} values) but the weight has {k_in} input features"
            ),
        ));
    }
    if nsamples == 0 {
        return Err(Error::tensor(
            name,
            "GPTQ needs calibration data: the Hessian has no samples",
        ));
    }
    if !(cfg.damp >= 0.0 && cfg.damp.is_finite()) || cfg.block_size == 0 {
        return Err(Error::tensor(
            name,
            format!(
                "invalid GPTQ settings: damp {} (must be >= 0), block size {} (must be > 0)",
                cfg.damp, cfg.block_size
            ),
        ));
    }
    Ok(())
}

/// Refuses a weight holding NaN/Inf, naming the first one. Part of `check_solver_inputs`;
/// exported for solvers that skip it where the caller has already checked (the GPU layer loop
/// reads weights that `load_layer` checked: scanning them again cost it 13.5 s at 7B).
pub fn check_weight_finite(w: &Weight<'_>) -> Result<()> {
    let k_in = w.in_features.max(1);
    if let Some(i) = w.data.par_iter().position_first(|v| !v.is_finite()) {
        return Err(Error::tensor(
            w.name,
            format!(
                "weight has a non-finite value {} at [{}, {}]",
                w.data[i],
                i / k_in,
                i % k_in
            ),
        ));
    }
    Ok(())
}

/// `check_solver_inputs` without the weight scan (shapes, Hessian size, settings).
pub fn check_solver_shapes(
    w: &Weight<'_>,
    h_dim: usize,
    h_len: usize,
    nsamples: usize,
    cfg: &GptqConfig,
) -> Result<()> {
    check_solver_inputs_impl(w, h_dim, h_len, nsamples, cfg)
}

/// The error for a non-finite Hessian entry at flat index `i` of a `dim` x `dim` matrix.
pub fn non_finite_hessian(name: &str, value: f64, i: usize, dim: usize) -> Error {
    Error::tensor(
        name,
        format!(
            "Hessian of the layer input has a non-finite value {value} at [{}, {}] \
             (NaN/inf in the calibration activations?)",
            i / dim,
            i % dim
        ),
    )
}

/// The damping-retry loop shared by every backend: `attempt(λ)` factors the damped Hessian
/// and returns `Ok(Err(pivot))` (pivot in flipped sweep order, as `inverse_cholesky_upper`)
/// when it is not positive definite; the damping is then multiplied by 10 (0 becomes 1e-6),
/// up to `MAX_DAMP_RETRIES` times. Returns the factor, the relative damping that worked and
/// the number of failed attempts.
pub fn with_damping_retries<U>(
    name: &str,
    damp: f64,
    plan: &SweepPlan,
    mut attempt: impl FnMut(f64) -> Result<std::result::Result<U, usize>>,
) -> Result<(U, f64, u32)> {
    let k = plan.perm.len();
    let mean_diag = plan.mean_diag;
    let mut damp = damp;
    let mut tried = Vec::new();
    loop {
        tried.push(damp);
        match attempt(damp * mean_diag)? {
            Ok(u) => return Ok((u, damp, tried.len() as u32 - 1)),
            Err(_) if tried.len() <= MAX_DAMP_RETRIES as usize => {
                damp = if damp > 0.0 { damp * 10.0 } else { 1e-6 };
            }
            Err(pos) => {
                return Err(Error::tensor(
                    name,
                    format!(
                        "Cholesky of the damped Hessian failed (not positive definite at input \
                         column {}) with every damping tried {:?} x mean(diag H) = {mean_diag:e}; \
                         the calibration activations are degenerate or the damping too small",
                        plan.perm[k - 1 - pos.min(k - 1)],
                        tried
                    ),
                ))
            }
        }
    }
}

/// The weight in sweep order ([out, in] row-major), dead columns zeroed.
pub fn sweep_order_weight(w: &Weight<'_>, plan: &SweepPlan) -> Vec<f32> {
    let k = w.in_features;
    let mut wp = vec![0f32; w.data.len()];
    wp.par_chunks_mut(k.max(1))
        .zip(w.data.par_chunks(k.max(1)))
        .for_each(|(row, src)| {
            for (i, v) in row.iter_mut().enumerate() {
                let c = plan.perm[i];
                *v = if plan.dead[c] { 0.0 } else { src[c] };
            }
        });
    wp
}

/// Group parameters fitted before the sweep (static groups, per-channel grids) on the
/// original weight with dead columns zeroed, [out, groups].
pub fn up_front_params(
    w: &Weight<'_>,
    plan: &SweepPlan,
    s: &QuantScheme,
    fit: GridFit,
) -> Result<Array2<GroupParams>> {
    let k = w.in_features;
    let glen = s.group_len(k);
    let placeholder = GroupParams {
        scale: 0.0,
        zero: 0,
    };
    let mut params = Array2::from_elem((w.out_features, s.num_groups(k)), placeholder);
    params
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(w.data.par_chunks(k))
        .try_for_each(|(mut prow, src)| -> Result<()> {
            let row: Vec<f32> = src
                .iter()
                .zip(&plan.dead)
                .map(|(&v, &d)| if d { 0.0 } else { v })
                .collect();
            for (g, chunk) in row.chunks(glen).enumerate() {
                prow[g] = GroupParams::fit_with(chunk, s, w.scale_dtype, w.name, fit)?;
            }
            Ok(())
        })?;
    Ok(params)
}

/// The `QuantizedLinear` in original column order from the sweep's levels (`q_sweep`,
/// [out, in] in sweep order) and the group parameters ([groups, out]).
pub fn assemble(
    s: &QuantScheme,
    n_out: usize,
    plan: &SweepPlan,
    col_group: &[usize],
    q_sweep: &[u8],
    scales: Vec<f32>,
    zeros: Vec<u32>,
) -> QuantizedLinear {
    let k = plan.perm.len();
    let perm = &plan.perm;
    let mut q = vec![0u8; n_out * k];
    q.par_chunks_mut(k)
        .zip(q_sweep.par_chunks(k))
        .for_each(|(dst, src)| {
            for (i, &v) in src.iter().enumerate() {
                dst[perm[i]] = v;
            }
        });
    let mut g_idx = vec![0u32; k];
    for i in 0..k {
        g_idx[perm[i]] = col_group[i] as u32;
    }
    QuantizedLinear {
        scheme: *s,
        out_features: n_out,
        in_features: k,
        q,
        scales,
        zeros,
        g_idx,
    }
}

/// Relative proxy error tr((W-Wq) H (W-Wq)ᵀ) / tr(W H Wᵀ): on the calibration inputs this is
/// ||XWᵀ - XWqᵀ||² / ||XWᵀ||², the relative output error of the layer. Works for any method's
/// dequantized weight. `w`, `wq`: [out, in] row-major with in = `h.dim`.
pub fn output_error(w: &[f32], wq: &[f32], h: &Hessian) -> f64 {
    output_errors(w, &[wq], h)[0]
}

/// `output_error` of several candidate weights at once (the denominator and the pass over H
/// are shared).
pub fn output_errors(w: &[f32], candidates: &[&[f32]], h: &Hessian) -> Vec<f64> {
    let k = h.dim;
    assert!(
        k > 0 && w.len() % k == 0,
        "output_error: weight is not [_, {k}]"
    );
    for c in candidates {
        assert_eq!(w.len(), c.len(), "output_error: weight sizes differ");
    }
    let nc = candidates.len();
    // The products run in f32 (as fast as the GPTQ sweep itself); each row's quadratic form is
    // summed in f64. Accurate to ~1e-5 relative, plenty for a reported metric.
    let h32 = Array2::from_shape_vec((k, k), h.h.par_iter().map(|&v| v as f32).collect())
        .expect("Hessian is dim x dim");
    // Tasks are (row chunk, column slab of H) pairs so that even a 128-row weight keeps
    // every core busy; partial sums are added in task order (thread-count independent).
    const ROWS: usize = 256;
    const SLAB: usize = 512;
    let chunks = w.len().div_ceil(ROWS * k);
    let slabs = k.div_ceil(SLAB);
    let parts: Vec<Vec<f64>> = (0..chunks * slabs)
        .into_par_iter()
        .map(|task| {
            let (ci, si) = (task / slabs, task % slabs);
            let (j0, j1) = (si * SLAB, ((si + 1) * SLAB).min(k));
            let start = ci * ROWS * k;
            let end = (start + ROWS * k).min(w.len());
            let a = &w[start..end];
            let r = a.len() / k;
            // Block j < nc: W - candidate j; block nc: W.
            let mut m = Array2::<f32>::zeros(((nc + 1) * r, k));
            for (i, mut row) in m.axis_iter_mut(Axis(0)).enumerate() {
                let (block, ri) = (i / r, i % r);
                let src = &a[ri * k..(ri + 1) * k];
                if block < nc {
                    let q = &candidates[block][start + ri * k..start + (ri + 1) * k];
                    for ((v, &x), &y) in row.iter_mut().zip(src).zip(q) {
                        *v = x - y;
                    }
                } else {
                    row.assign(&ArrayView1::from(src));
                }
            }
            let mh = m.dot(&h32.slice(s![.., j0..j1]));
            let mut sums = vec![0.0; nc + 1];
            for (i, y) in mh.axis_iter(Axis(0)).enumerate() {
                let x = m.slice(s![i, j0..j1]);
                sums[i / r] += x
                    .iter()
                    .zip(y)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>();
            }
            sums
        })
        .collect();
    let mut totals = vec![0.0; nc + 1];
    for p in parts {
        totals.iter_mut().zip(p).for_each(|(t, v)| *t += v);
    }
    let den = totals[nc];
    totals[..nc]
        .iter()
        .map(|&num| relative_output_error(num, den))
        .collect()
}

/// J·(P H Pᵀ + λI)·J with dead diagonals set to 1, where P permutes to sweep order and J
/// reverses the index order. Lower Cholesky of this flipped matrix gives the upper factor of
/// the inverse directly (see `inverse_cholesky_upper`).
pub(crate) fn damped_flipped_hessian(
    h: &Hessian,
    perm: &[usize],
    dead: &[bool],
    lambda: f64,
) -> Array2<f64> {
    let k = h.dim;
    let mut a = Array2::<f64>::zeros((k, k));
    a.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(i, mut row)| {
            let pi = perm[k - 1 - i];
            let src = &h.h[pi * k..(pi + 1) * k];
            for (j, v) in row.iter_mut().enumerate() {
                *v = src[perm[k - 1 - j]];
            }
            if dead[pi] {
                row[i] = 1.0;
            }
            row[i] += lambda;
        });
    a
}

/// The upper-triangular U with H⁻¹ = UᵀU and a positive diagonal: what the reference gets from
/// cholesky(H) → cholesky_inverse → cholesky(upper=True). Computed with one Cholesky and one
/// triangular inverse instead: if J H J = L Lᵀ (J reverses indices), then H = R Rᵀ with
/// R = J L J upper, so H⁻¹ = R⁻ᵀR⁻¹ and U = R⁻¹ = J L⁻¹ J (the Cholesky factor is unique).
/// Takes J H J; on failure returns the index (in that flipped order) of the bad pivot.
pub(crate) fn inverse_cholesky_upper(
    mut a: Array2<f64>,
) -> std::result::Result<Array2<f32>, usize> {
    cholesky_lower(&mut a)?;
    invert_lower(&mut a);
    let n = a.nrows();
    let mut u = Array2::<f32>::zeros((n, n));
    u.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(i, mut row)| {
            let src = a.row(n - 1 - i);
            for (j, v) in row.iter_mut().enumerate().skip(i) {
                *v = src[n - 1 - j] as f32;
            }
        });
    Ok(u)
}

/// `c = alpha·a·b + beta·c`, in fixed row chunks of `c` run in parallel.
fn par_gemm<T: LinalgScalar + Send + Sync>(
    alpha: T,
    a: ArrayView2<'_, T>,
    b: ArrayView2<'_, T>,
    beta: T,
    mut c: ArrayViewMut2<'_, T>,
) {
    c.axis_chunks_iter_mut(Axis(0), PAR_ROWS)
        .into_par_iter()
        .zip(a.axis_chunks_iter(Axis(0), PAR_ROWS).into_par_iter())
        .for_each(|(mut c, a)| general_mat_mul(alpha, &a, &b, beta, &mut c));
}

/// In-place blocked right-looking Cholesky A = L Lᵀ. Reads the lower triangle; leaves L there
/// and zeros above. Err(j) if pivot j is not positive (or NaN), like LAPACK `potrf`.
fn cholesky_lower(a: &mut Array2<f64>) -> std::result::Result<(), usize> {
    let n = a.nrows();
    for k0 in (0..n).step_by(CHOL_BLOCK) {
        let k1 = (k0 + CHOL_BLOCK).min(n);
        // Diagonal block, unblocked (it already holds all earlier trailing updates).
        for j in k0..k1 {
            let mut d = a[[j, j]];
            for p in k0..j {
                d -= a[[j, p]] * a[[j, p]];
            }
            if !(d > 0.0 && d.is_finite()) {
                return Err(j);
            }
            let d = d.sqrt();
            a[[j, j]] = d;
            for i in j + 1..k1 {
                let mut v = a[[i, j]];
                for p in k0..j {
                    v -= a[[i, p]] * a[[j, p]];
                }
                a[[i, j]] = v / d;
            }
        }
        if k1 == n {
            break;
        }
        // Panel: L21 = A21 · L11⁻ᵀ, as a GEMM with the inverted (small, well-conditioned:
        // damped H) diagonal block.
        let mut inv11 = a.slice(s![k0..k1, k0..k1]).to_owned();
        invert_lower_small(inv11.view_mut());
        let (_, mut bottom) = a.view_mut().split_at(Axis(0), k1);
        let a21 = bottom.slice(s![.., k0..k1]).to_owned();
        par_gemm(
            1.0,
            a21.view(),
            inv11.t(),
            0.0,
            bottom.slice_mut(s![.., k0..k1]),
        );
        drop(a21);
        // Trailing update of the lower triangle: A22 -= L21 L21ᵀ.
        let (left, mut right) = bottom.view_mut().split_at(Axis(1), k1);
        let l21 = left.slice(s![.., k0..k1]);
        right
            .axis_chunks_iter_mut(Axis(0), PAR_ROWS)
            .into_par_iter()
            .enumerate()
            .for_each(|(ci, mut c)| {
                let r0 = ci * PAR_ROWS;
                let r1 = r0 + c.nrows();
                let mut c = c.slice_mut(s![.., ..r1]);
                general_mat_mul(
                    -1.0,
                    &l21.slice(s![r0..r1, ..]),
                    &l21.slice(s![..r1, ..]).t(),
                    1.0,
                    &mut c,
                );
            });
    }
    a.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(i, mut row)| row.slice_mut(s![i + 1..]).fill(0.0));
    Ok(())
}

/// In-place inverse of a lower-triangular matrix with zeros above the diagonal (blocked,
/// last block first, as LAPACK `trtri`): (L⁻¹)₂₁ = -L₂₂⁻¹ L₂₁ L₁₁⁻¹.
fn invert_lower(a: &mut Array2<f64>) {
    let n = a.nrows();
    let starts: Vec<usize> = (0..n).step_by(CHOL_BLOCK).collect();
    for &k0 in starts.iter().rev() {
        let k1 = (k0 + CHOL_BLOCK).min(n);
        invert_lower_small(a.slice_mut(s![k0..k1, k0..k1]));
        if k1 == n {
            continue;
        }
        let (top, mut bottom) = a.view_mut().split_at(Axis(0), k1);
        let inv11 = top.slice(s![k0..k1, k0..k1]);
        let (mut left, right) = bottom.view_mut().split_at(Axis(1), k1);
        let inv22 = right.view();
        let mut a21 = left.slice_mut(s![.., k0..k1]);
        // t = L₂₂⁻¹ · L₂₁; L₂₂⁻¹ is lower, so row chunk r0..r1 only needs columns ..r1.
        let mut t = Array2::<f64>::zeros(a21.raw_dim());
        {
            let l21 = a21.view();
            t.axis_chunks_iter_mut(Axis(0), PAR_ROWS)
                .into_par_iter()
                .enumerate()
                .for_each(|(ci, mut tc)| {
                    let r0 = ci * PAR_ROWS;
                    let r1 = r0 + tc.nrows();
                    general_mat_mul(
                        1.0,
                        &inv22.slice(s![r0..r1, ..r1]),
                        &l21.slice(s![..r1, ..]),
                        0.0,
                        &mut tc,
                    );
                });
        }
        par_gemm(-1.0, t.view(), inv11, 0.0, a21.view_mut());
    }
}

fn invert_lower_small(mut a: ArrayViewMut2<'_, f64>) {
    let n = a.nrows();
    let l = a.to_owned();
    a.fill(0.0);
    for j in 0..n {
        a[[j, j]] = 1.0 / l[[j, j]];
        for i in j + 1..n {
            let mut acc = 0.0;
            for p in j..i {
                acc += l[[i, p]] * a[[p, j]];
            }
            a[[i, j]] = -acc / l[[i, i]];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::quant::rtn::Rtn;
    use crate::quant::QuantMethod;

    use crate::rng::SplitMix64 as Rng;

    /// Inputs with a few dominant directions, uneven channel scales and outlier channels, and
    /// a weight with a few large entries: the regime where GPTQ's error feedback pays.
    fn correlated_problem(seed: u64, n: usize, k: usize, rows: usize) -> (Vec<f32>, Vec<f32>) {
        problem(seed, n, k, rows, 1.0)
    }

    /// `strength` scales the dominant directions and outlier channels against the isotropic
    /// noise (1.0: strongly low-rank; 0.25: mildly correlated).
    fn problem(seed: u64, n: usize, k: usize, rows: usize, strength: f64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = Rng(seed);
        let dirs = 5;
        let a: Vec<f64> = (0..dirs * k).map(|_| rng.normal()).collect();
        let chan: Vec<f64> = (0..k).map(|_| 0.3 + 1.2 * rng.unit()).collect();
        let mut x = vec![0f32; rows * k];
        for r in 0..rows {
            let z: Vec<f64> = (0..dirs)
                .map(|d| rng.normal() * [8.0, 5.0, 3.0, 2.0, 1.5][d] * strength)
                .collect();
            for c in 0..k {
                let mut v = rng.normal() * chan[c];
                for d in 0..dirs {
                    v += z[d] * a[d * k + c];
                }
                if c % 61 == 7 {
                    v *= 1.0 + 9.0 * strength;
                }
                x[r * k + c] = v as f32;
            }
        }
        let w: Vec<f32> = (0..n * k)
            .map(|_| {
                let v = rng.normal() * 0.04;
                (if rng.unit() < 0.01 { v * 6.0 } else { v }) as f32
            })
            .collect();
        (w, x)
    }

    fn hessian_of(x: &[f32], k: usize) -> Hessian {
        let mut h = Hessian::new(k);
        h.add_batch(x, x.len() / k);
        h
    }

    fn weight<'a>(data: &'a [f32], n: usize, k: usize) -> Weight<'a> {
        Weight {
            name: "model.layers.0.mlp.down_proj",
            data,
            out_features: n,
            in_features: k,
            scale_dtype: DType::BF16,
        }
    }

    fn config(bits: u8, gs: i64, sym: bool, act_order: ActOrder) -> GptqConfig {
        GptqConfig {
            act_order,
            ..GptqConfig::new(QuantScheme::new(bits, gs, sym).unwrap())
        }
    }

    fn rtn_error(w: &Weight<'_>, scheme: QuantScheme, h: &Hessian) -> f64 {
        let deq = Rtn { scheme }.quantize(w).unwrap().dequantize();
        output_error(w.data, &deq, h)
    }

    fn random_spd(k: usize, seed: u64) -> Array2<f64> {
        let mut rng = Rng(seed);
        let m = Array2::from_shape_fn((k, k), |_| rng.normal());
        let mut a = m.t().dot(&m);
        for i in 0..k {
            a[[i, i]] += 0.1 * k as f64;
        }
        a
    }

    #[test]
    fn inverse_cholesky_upper_is_the_factor_of_the_inverse() {
        for k in [1, 7, 64, 150, 200] {
            let h = random_spd(k, k as u64);
            let flipped = h.slice(s![..;-1, ..;-1]).to_owned();
            let u = inverse_cholesky_upper(flipped).unwrap().mapv(|v| v as f64);
            for i in 0..k {
                assert!(u[[i, i]] > 0.0);
                for j in 0..i {
                    assert_eq!(u[[i, j]], 0.0, "U not upper at [{i},{j}]");
                }
            }
            // UᵀU H = I (U is f32, so ~1e-6).
            let p = u.t().dot(&u).dot(&h);
            for i in 0..k {
                for j in 0..k {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!(
                        (p[[i, j]] - want).abs() < 1e-4,
                        "k={k} [{i},{j}] {}",
                        p[[i, j]]
                    );
                }
            }
        }
    }

    #[test]
    fn cholesky_and_inverse_match_the_unblocked_definitions() {
        let k = 130;
        let h = random_spd(k, 3);
        let mut l = h.clone();
        cholesky_lower(&mut l).unwrap();
        let llt = l.dot(&l.t());
        for (a, b) in llt.iter().zip(&h) {
            assert!((a - b).abs() < 1e-9 * b.abs().max(1.0));
        }
        let mut inv = l.clone();
        invert_lower(&mut inv);
        let id = inv.dot(&l);
        for i in 0..k {
            for j in 0..k {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (id[[i, j]] - want).abs() < 1e-12,
                    "[{i},{j}] {}",
                    id[[i, j]]
                );
            }
        }
    }

    #[test]
    fn hessian_matches_the_definition_and_the_running_average() {
        let (k, rows) = (300, 1500);
        let (_, x) = correlated_problem(1, 8, k, rows);
        let one = hessian_of(&x, k);
        let mut naive = vec![0f64; k * k];
        for r in 0..rows {
            let xr = &x[r * k..(r + 1) * k];
            for i in 0..k {
                for j in 0..k {
                    naive[i * k + j] += xr[i] as f64 * xr[j] as f64;
                }
            }
        }
        let scale = one.h.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (a, b) in one.h.iter().zip(&naive) {
            assert!((a - 2.0 * b / rows as f64).abs() < 1e-5 * scale);
        }
        // Symmetric exactly.
        for i in 0..k {
            for j in 0..i {
                assert_eq!(one.h[i * k + j], one.h[j * k + i]);
            }
        }
        // Uneven batches give the same average.
        let mut batched = Hessian::new(k);
        let mut r0 = 0;
        for m in [1, 700, 13, 786] {
            batched.add_batch(&x[r0 * k..(r0 + m) * k], m);
            r0 += m;
        }
        assert_eq!(batched.nsamples, rows);
        for (a, b) in one.h.iter().zip(&batched.h) {
            assert!((a - b).abs() < 1e-5 * scale);
        }
    }

    fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let (n, k, rows) = (72, 320, 600);
        let (w, x) = correlated_problem(2, n, k, rows);
        let h1 = in_pool(1, || hessian_of(&x, k));
        let h4 = in_pool(4, || hessian_of(&x, k));
        assert_eq!(h1, h4);
        for ao in [ActOrder::None, ActOrder::Permute, ActOrder::StaticGroups] {
            let cfg = GptqConfig {
                block_size: 64,
                ..config(4, 32, false, ao)
            };
            let run = |t| in_pool(t, || gptq_quantize(&weight(&w, n, k), &h1, &cfg).unwrap());
            let (a, b, c) = (run(1), run(4), run(4));
            assert_eq!(a, b, "{ao:?}");
            assert_eq!(b, c, "{ao:?}");
            assert_eq!(a.loss.to_bits(), b.loss.to_bits());
            let ea = in_pool(1, || output_error(&w, &a.linear.dequantize(), &h1));
            let eb = in_pool(4, || output_error(&w, &a.linear.dequantize(), &h1));
            assert_eq!(ea.to_bits(), eb.to_bits());
        }
    }

    #[test]
    fn gptq_beats_rtn_on_correlated_inputs() {
        let (n, k, rows) = (64, 256, 512);
        let mut worst: f64 = 0.0;
        for strength in [1.0, 0.25] {
            let (w, x) = problem(7, n, k, rows, strength);
            let h = hessian_of(&x, k);
            let wt = weight(&w, n, k);
            for bits in [4, 8] {
                for gs in [32, 128, -1] {
                    for sym in [true, false] {
                        let rtn = rtn_error(&wt, QuantScheme::new(bits, gs, sym).unwrap(), &h);
                        for ao in [ActOrder::None, ActOrder::Permute, ActOrder::StaticGroups] {
                            let cfg = config(bits, gs, sym, ao);
                            let out = gptq_quantize(&wt, &h, &cfg).unwrap();
                            let err = output_error(&w, &out.linear.dequantize(), &h);
                            let ratio = err / rtn;
                            println!(
                            "strength {strength} int{bits} g{gs} {} {ao:?}: gptq {err:.3e} rtn {rtn:.3e} ratio {ratio:.3}",
                            if sym { "sym" } else { "asym" }
                        );
                            assert_eq!(out.retries, 0);
                            assert!(
                                ratio < 0.7,
                                "int{bits} g{gs} sym={sym} {ao:?}: ratio {ratio}"
                            );
                            worst = worst.max(ratio);
                        }
                    }
                }
            }
        }
        println!("worst GPTQ/RTN output-error ratio {worst:.3}");
    }

    #[test]
    fn identity_hessian_reduces_to_rtn() {
        let (n, k) = (32, 128);
        let (w, _) = correlated_problem(3, n, k, 1);
        let mut h = Hessian::new(k);
        for i in 0..k {
            h.h[i * k + i] = 1.0;
        }
        h.nsamples = 1;
        for (gs, sym) in [(32, true), (128, false), (-1, true)] {
            let scheme = QuantScheme::new(4, gs, sym).unwrap();
            let rtn = Rtn { scheme }.quantize(&weight(&w, n, k)).unwrap();
            for ao in [ActOrder::None, ActOrder::Permute, ActOrder::StaticGroups] {
                // No off-diagonal coupling: no error feedback, every column rounds to nearest.
                let out = gptq_quantize(&weight(&w, n, k), &h, &config(4, gs, sym, ao)).unwrap();
                assert_eq!(out.linear, rtn, "g{gs} sym={sym} {ao:?}");
            }
        }
    }

    #[test]
    fn uncorrelated_inputs_give_about_rtn_error() {
        let (n, k, rows) = (64, 128, 4096);
        let (w, _) = correlated_problem(4, n, k, 1);
        let mut rng = Rng(5);
        let x: Vec<f32> = (0..rows * k).map(|_| rng.normal() as f32).collect();
        let h = hessian_of(&x, k);
        let scheme = QuantScheme::new(4, 128, true).unwrap();
        let rtn = rtn_error(&weight(&w, n, k), scheme, &h);
        let out = gptq_quantize(&weight(&w, n, k), &h, &GptqConfig::new(scheme)).unwrap();
        let err = output_error(&w, &out.linear.dequantize(), &h);
        println!(
            "white inputs: gptq {err:.4e} rtn {rtn:.4e} ratio {:.3}",
            err / rtn
        );
        assert!(err / rtn > 0.85 && err / rtn <= 1.0, "ratio {}", err / rtn);
    }

    #[test]
    fn dead_columns_are_zero_and_harmless() {
        let (n, k, rows) = (32, 128, 400);
        let (w, mut x) = correlated_problem(6, n, k, rows);
        let dead = [0usize, 5, 64, 127];
        for r in 0..rows {
            for &c in &dead {
                x[r * k + c] = 0.0;
            }
        }
        let h = hessian_of(&x, k);
        for ao in [ActOrder::None, ActOrder::Permute, ActOrder::StaticGroups] {
            let out = gptq_quantize(&weight(&w, n, k), &h, &config(4, 32, false, ao)).unwrap();
            let deq = out.linear.dequantize();
            assert!(deq.iter().all(|v| v.is_finite()));
            for r in 0..n {
                for &c in &dead {
                    assert_eq!(deq[r * k + c], 0.0, "{ao:?} [{r},{c}]");
                }
            }
            let rtn = rtn_error(&weight(&w, n, k), out.linear.scheme, &h);
            assert!(output_error(&w, &deq, &h) < 0.7 * rtn, "{ao:?}");
        }
    }

    /// H = diag(4·[[1,1],[1,1]], 4·I): exactly singular in its first two columns.
    fn singular_hessian(k: usize) -> Hessian {
        let mut h = Hessian::new(k);
        for i in 0..k {
            h.h[i * k + i] = 4.0;
        }
        h.h[1] = 4.0;
        h.h[k] = 4.0;
        h.nsamples = 1;
        h
    }

    #[test]
    fn failed_cholesky_is_retried_with_more_damping() {
        let (n, k) = (16, 64);
        let (w, _) = correlated_problem(8, n, k, 1);
        let h = singular_hessian(k);
        // 1e-17 · 4 is below half an ulp of 4: the first pivot of the pair stays exactly 0.
        let cfg = GptqConfig {
            damp: 1e-17,
            ..config(4, 32, true, ActOrder::None)
        };
        let out = gptq_quantize(&weight(&w, n, k), &h, &cfg).unwrap();
        assert!(out.retries >= 1, "no retry");
        let want = 1e-17 * 10f64.powi(out.retries as i32);
        assert!(
            (out.damp_used - want).abs() < 1e-6 * want,
            "{}",
            out.damp_used
        );
        assert!(out.linear.dequantize().iter().all(|v| v.is_finite()));
        // The default damping needs no retry.
        let out =
            gptq_quantize(&weight(&w, n, k), &h, &config(4, 32, true, ActOrder::None)).unwrap();
        assert_eq!((out.retries, out.damp_used), (0, 0.01));
    }

    #[test]
    fn cholesky_failing_after_all_retries_names_tensor_and_damping() {
        let (n, k) = (8, 16);
        let w = vec![0.5f32; n * k];
        let mut h = singular_hessian(k);
        // Strongly indefinite: no damping up to 100 x mean(diag) fixes it.
        h.h[2 * k + 3] = 1e6;
        h.h[3 * k + 2] = 1e6;
        let err = gptq_quantize(&weight(&w, n, k), &h, &config(4, -1, true, ActOrder::None))
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.layers.0.mlp.down_proj"), "{err}");
        assert!(err.contains("Cholesky") && err.contains("100.0"), "{err}");
    }

    #[test]
    fn non_finite_inputs_are_errors_naming_the_tensor() {
        let (n, k) = (8, 16);
        let mut w = vec![0.5f32; n * k];
        let mut h = singular_hessian(k);
        h.h[1] = 0.0;
        h.h[k] = 0.0;
        h.h[5 * k + 5] = f64::NAN;
        let cfg = config(4, -1, true, ActOrder::None);
        let err = gptq_quantize(&weight(&w, n, k), &h, &cfg)
            .unwrap_err()
            .to_string();
        assert!(err.contains("down_proj") && err.contains("Hessian") && err.contains("[5, 5]"));
        h.h[5 * k + 5] = 1.0;
        w[3 * k + 2] = f32::INFINITY;
        let err = gptq_quantize(&weight(&w, n, k), &h, &cfg)
            .unwrap_err()
            .to_string();
        assert!(err.contains("down_proj") && err.contains("weight") && err.contains("[3, 2]"));
        let err = gptq_quantize(&weight(&w, n, k), &Hessian::new(k), &cfg)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no samples"), "{err}");
    }

    #[test]
    fn g_idx_reproduces_the_weight_the_solver_used() {
        let (n, k, rows) = (32, 256, 400);
        let (w, x) = correlated_problem(9, n, k, rows);
        let h = hessian_of(&x, k);
        for (ao, gs) in [
            (ActOrder::Permute, 32),
            (ActOrder::Permute, 64),
            (ActOrder::StaticGroups, 64),
            (ActOrder::None, 128),
        ] {
            let cfg = GptqConfig {
                block_size: 48, // groups straddle blocks
                ..config(4, gs, false, ao)
            };
            let (out, used) = solve(&weight(&w, n, k), &h, &cfg, true).unwrap();
            let used = used.unwrap();
            assert_eq!(out.linear.dequantize(), used, "{ao:?} g{gs}");
            let g_idx = &out.linear.g_idx;
            let trivial = g_idx
                .iter()
                .enumerate()
                .all(|(c, &g)| g as usize == c / gs as usize);
            assert_eq!(trivial, ao != ActOrder::Permute, "{ao:?}");
            // Every group still has exactly group_size members.
            let mut count = vec![0; k / gs as usize];
            for &g in g_idx {
                count[g as usize] += 1;
            }
            assert!(count.iter().all(|&c| c == gs as usize), "{count:?}");
        }
    }

    #[test]
    fn static_groups_flag_with_permute_behaves_like_static_groups() {
        let (n, k, rows) = (16, 128, 300);
        let (w, x) = correlated_problem(10, n, k, rows);
        let h = hessian_of(&x, k);
        let a = gptq_quantize(
            &weight(&w, n, k),
            &h,
            &GptqConfig {
                static_groups: true,
                ..config(4, 32, true, ActOrder::Permute)
            },
        )
        .unwrap();
        let b = gptq_quantize(
            &weight(&w, n, k),
            &h,
            &config(4, 32, true, ActOrder::StaticGroups),
        )
        .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn output_error_is_the_relative_output_error_on_the_inputs() {
        let (n, k, rows) = (8, 64, 100);
        let (w, x) = correlated_problem(11, n, k, rows);
        let h = hessian_of(&x, k);
        let wq: Vec<f32> = w.iter().map(|v| (v * 20.0).round() / 20.0).collect();
        let (mut num, mut den) = (0f64, 0f64);
        for r in 0..rows {
            for o in 0..n {
                let (mut y, mut yq) = (0f64, 0f64);
                for c in 0..k {
                    y += x[r * k + c] as f64 * w[o * k + c] as f64;
                    yq += x[r * k + c] as f64 * wq[o * k + c] as f64;
                }
                num += (y - yq) * (y - yq);
                den += y * y;
            }
        }
        let got = output_error(&w, &wq, &h);
        assert!(
            (got - num / den).abs() < 1e-5 * (num / den),
            "{got} vs {}",
            num / den
        );
        assert_eq!(output_error(&w, &w, &h), 0.0);
    }

    #[test]
    #[ignore = "timing at LLM size (4096x4096); run with --ignored --nocapture"]
    fn timing_at_llm_size() {
        let (n, k, rows) = (4096, 4096, 2048);
        let (w, x) = problem(12, n, k, rows, 0.25);
        let t = std::time::Instant::now();
        let h = hessian_of(&x, k);
        println!("add_batch {rows}x{k}: {:.2?}", t.elapsed());
        let t = std::time::Instant::now();
        let out = gptq_quantize(
            &weight(&w, n, k),
            &h,
            &config(4, 128, true, ActOrder::Permute),
        )
        .unwrap();
        println!("gptq_quantize {n}x{k}: {:.2?}", t.elapsed());
        let t = std::time::Instant::now();
        let err = output_error(&w, &out.linear.dequantize(), &h);
        println!("output_error: {:.2?} ({err:.3e})", t.elapsed());
    }
}
