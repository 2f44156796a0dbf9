//! The CPU backend: host `Vec`s, the runner's own numerics (`runner::forward`) where they
//! exist, rayon across rows.

use rayon::prelude::*;

use crate::backend::{
    check_add_rms_norm_half, check_len, check_qkv_rope_norm, check_silu_mul_fused,
    check_split_cols, rows_of, runner_err, AttnShape, Backend, Elem, GptqWeight, HalfKind,
    InverseFactor, MemStats,
};
use crate::error::Result;
use crate::quant::gptq::{
    damped_flipped_hessian, gptq_quantize, inverse_cholesky_upper, output_errors,
    with_damping_retries, GptqConfig, GptqOutcome, Hessian, SweepPlan,
};
use crate::quant::rtn::Rtn;
use crate::quant::{QuantMethod, QuantScheme, QuantizedLinear, Weight};
use crate::runner::forward::{attend, kv_head_of, rms_norm, silu, Rope};
use crate::runner::generate::argmax_with_margin;
use crate::runner::weights::dot;

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}

/// Row `n` of a GPTQ weight as the GPU kernels compute it: `half(scale * (q - zero))`.
fn gptq_row(w: &GptqWeight<CpuBackend>, n: usize, out: &mut [f32]) {
    let bits = w.bits as usize;
    let pf = 32 / bits;
    let mask = (1u32 << bits) - 1;
    let n_out = w.out_features;
    for (k, v) in out.iter_mut().enumerate() {
        let word = w.qweight[(k / pf) * n_out + n] as u32;
        let q = (word >> (bits * (k % pf))) & mask;
        let g = match &w.g_idx {
            Some(gi) => gi[k] as usize,
            None => k / w.group_len,
        };
        let zword = w.qzeros[g * (n_out / pf) + n / pf] as u32;
        // GPTQ v1 stores zero - 1; loaders add the 1 back without masking.
        let z = ((zword >> (bits * (n % pf))) & mask) + 1;
        let s = w.half.to_f32(w.scales[g * n_out + n]);
        *v = w.half.round(s * (q as f32 - z as f32));
    }
}

fn check_gptq_input(op: &str, x_len: usize, w: &GptqWeight<CpuBackend>, m: usize) -> Result<()> {
    check_len(op, "x", x_len, m * w.in_features)
}

impl Backend for CpuBackend {
    type Buf<T: Elem> = Vec<T>;
    type Graph = ();

    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn upload<T: Elem>(&self, host: &[T]) -> Result<Vec<T>> {
        Ok(host.to_vec())
    }

    fn zeros<T: Elem>(&self, len: usize) -> Result<Vec<T>> {
        Ok(vec![T::default(); len])
    }

    fn record(&self, _f: &mut dyn FnMut() -> Result<()>) -> Result<Option<()>> {
        Ok(None)
    }

    fn replay(&self, _graph: &()) -> Result<()> {
        Ok(())
    }

    fn write<T: Elem>(&self, dst: &mut Vec<T>, host: &[T]) -> Result<()> {
        check_len("write", "host data", host.len(), dst.len())?;
        dst.copy_from_slice(host);
        Ok(())
    }

    fn download<T: Elem>(&self, buf: &Vec<T>) -> Result<Vec<T>> {
        Ok(buf.clone())
    }

    fn len_of<T: Elem>(&self, buf: &Vec<T>) -> usize {
        buf.len()
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn memory(&self) -> MemStats {
        MemStats::default()
    }

    fn rms_norm(&self, x: &Vec<f32>, w: &Vec<f32>, eps: f32, out: &mut Vec<f32>) -> Result<()> {
        rows_of("rms_norm", "x", x.len(), w.len())?;
        check_len("rms_norm", "out", out.len(), x.len())?;
        out.copy_from_slice(x);
        out.par_chunks_mut(w.len())
            .for_each(|row| rms_norm(row, w, eps));
        Ok(())
    }

    fn rope(
        &self,
        x: &mut Vec<f32>,
        positions: &Vec<u32>,
        inv_freq: &Vec<f32>,
        head_dim: usize,
    ) -> Result<()> {
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(runner_err(format!("rope: head_dim {head_dim} is not even")));
        }
        check_len("rope", "inv_freq", inv_freq.len(), head_dim / 2)?;
        let rows = positions.len();
        if rows == 0 {
            return check_len("rope", "x", x.len(), 0);
        }
        let width = rows_of("rope", "x", x.len(), rows)?;
        rows_of("rope", "a row of x", width, head_dim)?;
        let rope = Rope {
            head_dim,
            inv_freq: inv_freq.clone(),
        };
        x.par_chunks_mut(width)
            .zip(positions.par_iter())
            .for_each(|(row, &p)| rope.apply(row, p as usize));
        Ok(())
    }

    fn silu_mul(&self, gate: &Vec<f32>, up: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        check_len("silu_mul", "up", up.len(), gate.len())?;
        check_len("silu_mul", "out", out.len(), gate.len())?;
        out.par_iter_mut()
            .zip(gate.par_iter().zip(up.par_iter()))
            .for_each(|(o, (g, u))| *o = silu(*g) * u);
        Ok(())
    }

    fn silu_mul_fused(&self, gu: &Vec<f32>, inter: usize, out: &mut Vec<f32>) -> Result<()> {
        check_silu_mul_fused(gu.len(), inter, out.len())?;
        silu_mul_rows(gu, inter, out, |v| v);
        Ok(())
    }

    fn embedding(
        &self,
        table: &Vec<u16>,
        half: HalfKind,
        hidden: usize,
        ids: &Vec<u32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let vocab = rows_of("embedding", "table", table.len(), hidden)?;
        check_len("embedding", "out", out.len(), ids.len() * hidden)?;
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(runner_err(format!(
                "embedding: token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        out.par_chunks_mut(hidden)
            .zip(ids.par_iter())
            .for_each(|(row, &t)| {
                let src = &table[t as usize * hidden..(t as usize + 1) * hidden];
                for (o, &b) in row.iter_mut().zip(src) {
                    *o = half.to_f32(b);
                }
            });
        Ok(())
    }

    fn argmax(
        &self,
        x: &Vec<f32>,
        cols: usize,
        out: &mut Vec<u32>,
        margin: &mut Vec<f32>,
    ) -> Result<()> {
        let rows = rows_of("argmax", "x", x.len(), cols)?;
        check_len("argmax", "out", out.len(), rows)?;
        check_len("argmax", "margin", margin.len(), rows)?;
        out.par_iter_mut()
            .zip(margin.par_iter_mut())
            .zip(x.par_chunks(cols))
            .for_each(|((o, m), row)| (*o, *m) = argmax_with_margin(row));
        Ok(())
    }

    fn to_half(&self, x: &Vec<f32>, half: HalfKind, out: &mut Vec<u16>) -> Result<()> {
        check_len("to_half", "out", out.len(), x.len())?;
        out.par_iter_mut()
            .zip(x.par_iter())
            .for_each(|(o, &v)| *o = half.from_f32(v));
        Ok(())
    }

    fn widen_half(&self, x: &Vec<u16>, half: HalfKind, out: &mut Vec<f32>) -> Result<()> {
        check_len("widen_half", "out", out.len(), x.len())?;
        out.par_iter_mut()
            .zip(x.par_iter())
            .for_each(|(o, &v)| *o = half.to_f32(v));
        Ok(())
    }

    fn gemm(
        &self,
        x: &Vec<u16>,
        w: &Vec<u16>,
        half: HalfKind,
        m: usize,
        n: usize,
        k: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        check_len("gemm", "x", x.len(), m * k)?;
        check_len("gemm", "w", w.len(), n * k)?;
        check_len("gemm", "out", out.len(), m * n)?;
        let xf: Vec<f32> = x.iter().map(|&b| half.to_f32(b)).collect();
        // Output transposed ([n, m]) so each task owns a contiguous block.
        let mut yt = vec![0f32; n * m];
        yt.par_chunks_mut(m.max(1)).enumerate().for_each_init(
            || vec![0f32; k],
            |wrow, (j, col)| {
                for (d, &b) in wrow.iter_mut().zip(&w[j * k..(j + 1) * k]) {
                    *d = half.to_f32(b);
                }
                for (i, o) in col.iter_mut().enumerate() {
                    *o = dot(&xf[i * k..(i + 1) * k], wrow);
                }
            },
        );
        for j in 0..n {
            for i in 0..m {
                out[i * n + j] = yt[j * m + i];
            }
        }
        Ok(())
    }

    fn gemm_gptq(
        &self,
        x: &Vec<u16>,
        w: &GptqWeight<Self>,
        m: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        check_gptq_input("gemm_gptq", x.len(), w, m)?;
        let (n, k) = (w.out_features, w.in_features);
        check_len("gemm_gptq", "out", out.len(), m * n)?;
        let xf: Vec<f32> = x.iter().map(|&b| w.half.to_f32(b)).collect();
        let mut yt = vec![0f32; n * m];
        yt.par_chunks_mut(m.max(1)).enumerate().for_each_init(
            || vec![0f32; k],
            |wrow, (j, col)| {
                gptq_row(w, j, wrow);
                for (i, o) in col.iter_mut().enumerate() {
                    *o = dot(&xf[i * k..(i + 1) * k], wrow);
                }
            },
        );
        for j in 0..n {
            for i in 0..m {
                out[i * n + j] = yt[j * m + i];
            }
        }
        Ok(())
    }

    fn dequantize_gptq(&self, w: &GptqWeight<Self>, out: &mut Vec<u16>) -> Result<()> {
        let (n, k) = (w.out_features, w.in_features);
        check_len("dequantize_gptq", "out", out.len(), n * k)?;
        out.par_chunks_mut(k).enumerate().for_each_init(
            || vec![0f32; k],
            |row, (j, dst)| {
                gptq_row(w, j, row);
                for (d, &v) in dst.iter_mut().zip(row.iter()) {
                    *d = w.half.from_f32(v);
                }
            },
        );
        Ok(())
    }

    fn kv_append(
        &self,
        k: &Vec<f32>,
        v: &Vec<f32>,
        slots: &Vec<u32>,
        positions: &Vec<u32>,
        shape: &AttnShape,
        half: HalfKind,
        k_cache: &mut Vec<u16>,
        v_cache: &mut Vec<u16>,
    ) -> Result<()> {
        shape.check()?;
        let kvd = shape.kv_width();
        let rows = slots.len();
        check_len("kv_append", "positions", positions.len(), rows)?;
        check_len("kv_append", "k", k.len(), rows * kvd)?;
        check_len("kv_append", "v", v.len(), rows * kvd)?;
        let n_slots = rows_of("kv_append", "k_cache", k_cache.len(), shape.max_len * kvd)?;
        check_len("kv_append", "v_cache", v_cache.len(), k_cache.len())?;
        for r in 0..rows {
            let (s, p) = (slots[r] as usize, positions[r] as usize);
            if s >= n_slots || p >= shape.max_len {
                return Err(runner_err(format!(
                    "kv_append: row {r} writes slot {s} position {p}; the cache has {n_slots} slots of {} positions",
                    shape.max_len
                )));
            }
            let at = (s * shape.max_len + p) * kvd;
            for (src, cache) in [(k, &mut *k_cache), (v, &mut *v_cache)] {
                for (c, &x) in cache[at..at + kvd]
                    .iter_mut()
                    .zip(&src[r * kvd..(r + 1) * kvd])
                {
                    *c = half.from_f32(x);
                }
            }
        }
        Ok(())
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        k_cache: &Vec<u16>,
        v_cache: &Vec<u16>,
        half: HalfKind,
        slots: &Vec<u32>,
        positions: &Vec<u32>,
        shape: &AttnShape,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        shape.check()?;
        let (qd, kvd, hd) = (shape.q_width(), shape.kv_width(), shape.head_dim);
        let rows = slots.len();
        check_len("attention", "positions", positions.len(), rows)?;
        check_len("attention", "q", q.len(), rows * qd)?;
        check_len("attention", "out", out.len(), rows * qd)?;
        let n_slots = rows_of("attention", "k_cache", k_cache.len(), shape.max_len * kvd)?;
        check_len("attention", "v_cache", v_cache.len(), k_cache.len())?;
        for r in 0..rows {
            if slots[r] as usize >= n_slots || positions[r] as usize >= shape.max_len {
                return Err(runner_err(format!(
                    "attention: row {r} reads slot {} position {}; the cache has {n_slots} slots of {} positions",
                    slots[r], positions[r], shape.max_len
                )));
            }
        }
        let group = shape.heads / shape.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let slot_len = shape.max_len * kvd;
        // The head's keys and values widened to f32 (exact), then the runner's f32 `attend`:
        // the same result as an f32 cache holding the rounded values, bit for bit.
        out.par_chunks_mut(hd).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(kw, vw), (idx, o)| {
                let (row, head) = (idx / shape.heads, idx % shape.heads);
                let s = slots[row] as usize;
                let ctx = positions[row] as usize + 1;
                let off = kv_head_of(head, group) * hd;
                for (cache, wide) in [(k_cache, &mut *kw), (v_cache, &mut *vw)] {
                    let slot = &cache[s * slot_len..(s + 1) * slot_len];
                    wide.clear();
                    wide.extend(
                        slot.chunks_exact(kvd)
                            .take(ctx)
                            .flat_map(|pos| &pos[off..off + hd])
                            .map(|&b| half.to_f32(b)),
                    );
                }
                let qh = &q[row * qd + head * hd..][..hd];
                attend(qh, kw, vw, ctx, hd, 0, scale, o);
            },
        );
        Ok(())
    }

    fn attention_prefill(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        samples: usize,
        seqlen: usize,
        shape: &AttnShape,
        // f32 always: the CPU has no TF32.
        _math: crate::backend::PrefillMath,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        shape.check()?;
        let rows = samples * seqlen;
        check_len("attention_prefill", "q", q.len(), rows * shape.q_width())?;
        check_len("attention_prefill", "k", k.len(), rows * shape.kv_width())?;
        check_len("attention_prefill", "v", v.len(), rows * shape.kv_width())?;
        check_len(
            "attention_prefill",
            "out",
            out.len(),
            rows * shape.q_width(),
        )?;
        if rows == 0 {
            return Ok(());
        }
        *out = crate::quant::calib_forward::causal_attention(
            q,
            k,
            v,
            seqlen,
            shape.heads,
            shape.kv_heads,
            shape.head_dim,
        );
        Ok(())
    }

    fn quantize_rtn(&self, scheme: &QuantScheme, w: &Weight<'_>) -> Result<QuantizedLinear> {
        Rtn { scheme: *scheme }.quantize(w)
    }

    fn hessian_add(
        &self,
        x: &Vec<f32>,
        rows: usize,
        h: &mut Vec<f32>,
        dim: usize,
        nsamples: usize,
    ) -> Result<()> {
        check_len("hessian_add", "x", x.len(), rows * dim)?;
        check_len("hessian_add", "h", h.len(), dim * dim)?;
        // gptq.rs's f64 accumulation, stored back in f32.
        let mut hess = Hessian::from_f32(dim, h, nsamples);
        hess.add_batch(x, rows);
        h.par_iter_mut()
            .zip(hess.h.par_iter())
            .for_each(|(d, &v)| *d = v as f32);
        Ok(())
    }

    fn hessian_add_half(
        &self,
        x: &Vec<u16>,
        half: HalfKind,
        rows: usize,
        h: &mut Vec<f32>,
        dim: usize,
        nsamples: usize,
    ) -> Result<()> {
        let xf: Vec<f32> = x.par_iter().map(|&v| half.to_f32(v)).collect();
        self.hessian_add(&xf, rows, h, dim, nsamples)
    }

    fn gptq_inverse_factor(
        &self,
        h: &Vec<f32>,
        dim: usize,
        plan: &SweepPlan,
        damp: f64,
        name: &str,
    ) -> Result<InverseFactor<Self>> {
        check_len("gptq_inverse_factor", "h", h.len(), dim * dim)?;
        check_len("gptq_inverse_factor", "plan", plan.perm.len(), dim)?;
        let hess = Hessian::from_f32(dim, h, 1);
        let (u, damp_used, retries) = with_damping_retries(name, damp, plan, |lambda| {
            Ok(inverse_cholesky_upper(damped_flipped_hessian(
                &hess, &plan.perm, &plan.dead, lambda,
            )))
        })?;
        Ok(InverseFactor {
            u: u.iter().copied().collect(),
            damp_used,
            retries,
        })
    }

    fn gptq_output_errors(
        &self,
        w: &[f32],
        candidates: &[&[f32]],
        h: &Vec<f32>,
        dim: usize,
    ) -> Result<Vec<f64>> {
        check_len("gptq_output_errors", "h", h.len(), dim * dim)?;
        rows_of("gptq_output_errors", "w", w.len(), dim)?;
        for c in candidates {
            check_len("gptq_output_errors", "candidate", c.len(), w.len())?;
        }
        Ok(output_errors(w, candidates, &Hessian::from_f32(dim, h, 1)))
    }

    fn gptq_quantize(
        &self,
        w: &Weight<'_>,
        h: &Vec<f32>,
        nsamples: usize,
        cfg: &GptqConfig,
    ) -> Result<GptqOutcome> {
        let dim = w.in_features;
        check_len("gptq_quantize", "h", h.len(), dim * dim)?;
        gptq_quantize(w, &Hessian::from_f32(dim, h, nsamples), cfg)
    }

    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>) -> Result<()> {
        check_len("add", "y", y.len(), x.len())?;
        x.par_iter_mut()
            .zip(y.par_iter())
            .for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn add_bias(&self, x: &mut Vec<f32>, bias: &Vec<f32>) -> Result<()> {
        rows_of("add_bias", "x", x.len(), bias.len())?;
        x.par_chunks_mut(bias.len()).for_each(|row| {
            row.iter_mut().zip(bias).for_each(|(a, b)| *a += b);
        });
        Ok(())
    }

    fn split_cols(
        &self,
        src: &Vec<f32>,
        rows: usize,
        src_cols: usize,
        col0: usize,
        dst: &mut Vec<f32>,
    ) -> Result<()> {
        let dst_cols = check_split_cols(src.len(), rows, src_cols, col0, dst.len())?;
        if dst_cols == 0 {
            return Ok(());
        }
        dst.par_chunks_mut(dst_cols)
            .zip(src.par_chunks(src_cols))
            .for_each(|(d, s)| d.copy_from_slice(&s[col0..col0 + dst_cols]));
        Ok(())
    }

    fn add_rms_norm_half(
        &self,
        x: &mut Vec<f32>,
        y: Option<&Vec<f32>>,
        w: &Vec<f32>,
        eps: f32,
        half: HalfKind,
        out: &mut Vec<u16>,
    ) -> Result<()> {
        check_add_rms_norm_half(x.len(), y.map(|y| y.len()), w.len(), out.len())?;
        if let Some(y) = y {
            self.add(x, y)?;
        }
        let dim = w.len();
        out.par_chunks_mut(dim)
            .zip(x.par_chunks(dim))
            .for_each(|(o, xr)| {
                let mut row = xr.to_vec();
                rms_norm(&mut row, w, eps);
                for (o, v) in o.iter_mut().zip(row) {
                    *o = half.from_f32(v);
                }
            });
        Ok(())
    }

    fn silu_mul_fused_half(
        &self,
        gu: &Vec<f32>,
        inter: usize,
        half: HalfKind,
        out: &mut Vec<u16>,
    ) -> Result<()> {
        check_silu_mul_fused(gu.len(), inter, out.len())?;
        silu_mul_rows(gu, inter, out, |v| half.from_f32(v));
        Ok(())
    }

    fn qkv_rope_norm(
        &self,
        qkv: &Vec<f32>,
        positions: &Vec<u32>,
        inv_freq: &Vec<f32>,
        shape: &AttnShape,
        qk_norm: Option<(&Vec<f32>, &Vec<f32>)>,
        eps: f32,
        q: &mut Vec<f32>,
        k: &mut Vec<f32>,
        v: &mut Vec<f32>,
    ) -> Result<()> {
        let rows = positions.len();
        check_qkv_rope_norm(
            qkv.len(),
            rows,
            inv_freq.len(),
            shape,
            qk_norm.map(|(a, b)| (a.len(), b.len())),
            q.len(),
            k.len(),
            v.len(),
        )?;
        if rows == 0 {
            return Ok(());
        }
        let (qw, kvw) = (shape.q_width(), shape.kv_width());
        let rope = Rope {
            head_dim: shape.head_dim,
            inv_freq: inv_freq.clone(),
        };
        q.par_chunks_mut(qw)
            .zip(k.par_chunks_mut(kvw))
            .zip(v.par_chunks_mut(kvw))
            .zip(qkv.par_chunks(qw + 2 * kvw).zip(positions.par_iter()))
            .for_each(|(((qr, kr), vr), (src, &p))| {
                qr.copy_from_slice(&src[..qw]);
                kr.copy_from_slice(&src[qw..qw + kvw]);
                vr.copy_from_slice(&src[qw + kvw..]);
                rope.apply(qr, p as usize);
                rope.apply(kr, p as usize);
                if let Some((qn, kn)) = qk_norm {
                    rms_norm(qr, qn, eps);
                    rms_norm(kr, kn, eps);
                }
            });
        Ok(())
    }

    fn gather_rows(
        &self,
        x: &Vec<f32>,
        width: usize,
        rows: &Vec<u32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let rows_in = rows_of("gather_rows", "x", x.len(), width)?;
        check_len("gather_rows", "out", out.len(), rows.len() * width)?;
        for (dst, &r) in out.chunks_mut(width).zip(rows) {
            if r as usize >= rows_in {
                return Err(runner_err(format!(
                    "gather_rows: row {r} of a {rows_in}-row input"
                )));
            }
            dst.copy_from_slice(&x[r as usize * width..(r as usize + 1) * width]);
        }
        Ok(())
    }
}

/// `out[r, j] = cast(silu(gu[r, j]) * gu[r, inter + j])` over a fused gate|up output.
fn silu_mul_rows<T: Send>(gu: &[f32], inter: usize, out: &mut [T], cast: impl Fn(f32) -> T + Sync) {
    out.par_chunks_mut(inter)
        .zip(gu.par_chunks(2 * inter))
        .for_each(|(o, row)| {
            let (g, u) = row.split_at(inter);
            for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                *o = cast(silu(*g) * u);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// `kv_append` stores exactly `HalfKind::from_f32` of k/v, and `attention` over the 16-bit
    /// cache is, bit for bit, the runner's f32 attention over an f32 cache holding the same
    /// rounded values (so the CUDA kernel, checked against this backend, reads the same
    /// numbers).
    #[test]
    fn half_kv_cache_is_the_rounded_f32_cache() {
        let b = CpuBackend::new();
        let shape = AttnShape {
            heads: 6,
            kv_heads: 2,
            head_dim: 64,
            max_len: 40,
        };
        let (qd, kvd, hd) = (shape.q_width(), shape.kv_width(), shape.head_dim);
        // Slot 1 gets 37 positions, slot 0 gets 3; rows interleaved.
        let (mut slots, mut positions) = (Vec::new(), Vec::new());
        for p in 0..37u32 {
            slots.push(1u32);
            positions.push(p);
            if p < 3 {
                slots.push(0);
                positions.push(p);
            }
        }
        let rows = slots.len();
        let mut rng = SplitMix64(9);
        let mut gen =
            |n: usize| -> Vec<f32> { (0..n).map(|_| (rng.normal() * 1.5) as f32).collect() };
        let (k, v, q) = (gen(rows * kvd), gen(rows * kvd), gen(rows * qd));
        for kind in [HalfKind::BF16, HalfKind::F16] {
            let cache_len = 2 * shape.max_len * kvd;
            let (mut kc, mut vc) = (vec![0u16; cache_len], vec![0u16; cache_len]);
            b.kv_append(&k, &v, &slots, &positions, &shape, kind, &mut kc, &mut vc)
                .unwrap();
            let (mut kf, mut vf) = (vec![0f32; cache_len], vec![0f32; cache_len]);
            for r in 0..rows {
                let at = (slots[r] as usize * shape.max_len + positions[r] as usize) * kvd;
                for j in 0..kvd {
                    assert_eq!(kc[at + j], kind.from_f32(k[r * kvd + j]), "{kind:?} k");
                    assert_eq!(vc[at + j], kind.from_f32(v[r * kvd + j]), "{kind:?} v");
                    kf[at + j] = kind.round(k[r * kvd + j]);
                    vf[at + j] = kind.round(v[r * kvd + j]);
                }
            }
            let mut out = vec![0f32; rows * qd];
            b.attention(&q, &kc, &vc, kind, &slots, &positions, &shape, &mut out)
                .unwrap();
            let scale = 1.0 / (hd as f32).sqrt();
            let group = shape.heads / shape.kv_heads;
            let slot_len = shape.max_len * kvd;
            let mut want = vec![0f32; rows * qd];
            for r in 0..rows {
                let s = slots[r] as usize;
                for h in 0..shape.heads {
                    attend(
                        &q[r * qd + h * hd..][..hd],
                        &kf[s * slot_len..(s + 1) * slot_len],
                        &vf[s * slot_len..(s + 1) * slot_len],
                        positions[r] as usize + 1,
                        kvd,
                        kv_head_of(h, group) * hd,
                        scale,
                        &mut want[r * qd + h * hd..][..hd],
                    );
                }
            }
            assert!(
                out.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{kind:?}: attention over the 16-bit cache differs from the f32 one"
            );
            // Rounding did happen: the cache is not the f32 input.
            assert!(k.iter().any(|&x| kind.round(x) != x));
        }
    }
}
