//! Linear layers kept in their stored form (bf16/f16/f32, or packed GPTQ v1 levels) and
//! multiplied with f32 activations. Rows of the weight are dequantized a tile at a time into a
//! per-thread f32 buffer, so the whole model never exists as f32 in memory.
//!
//! GPTQ v1 facts (../shared/formats.md): w[n, k] = scale[g_idx[k], n] * (q[n, k] - zero[g_idx[k], n]),
//! zeros stored minus one (undone by `export::gptq_v1::unpack`).

use half::f16;
use ndarray::linalg::general_mat_mul;
use ndarray::ArrayView2;
use rayon::prelude::*;

use crate::dtype::{self, DType};
use crate::error::{Error, Result};
use crate::export::gptq_v1;
use crate::model::Checkpoint;
use crate::quant::{QuantScheme, QuantizedLinear};

/// Output rows dequantized together by one task.
const TILE_ROWS: usize = 16;
/// From this many input rows on, a tile is multiplied with ndarray's GEMM instead of dots.
const GEMM_MIN_ROWS: usize = 4;

/// Weight bytes as stored in the checkpoint, [out_features, in_features] row-major.
#[derive(Clone, Debug)]
pub enum WeightStore {
    /// bf16 bit patterns.
    BF16(Vec<u16>),
    /// f16 bit patterns.
    F16(Vec<u16>),
    F32(Vec<f32>),
    Gptq(PackedLevels),
}

/// GPTQ levels packed `pack` per u32 word along the input dimension, one run of words per
/// output row (the transpose of the file's `qweight`, so a row tile is contiguous), with the
/// group parameters transposed to [out_features, groups].
#[derive(Clone, Debug)]
pub struct PackedLevels {
    pub bits: u32,
    /// [out_features, in_features / per_word]
    words: Vec<u32>,
    /// [out_features, groups]
    scales: Vec<f32>,
    /// [out_features, groups], the real zero point (stored value + 1).
    zeros: Vec<f32>,
    groups: usize,
    /// `None` when g_idx[k] == k / group_len for every k (no act-order permutation).
    g_idx: Option<Vec<u32>>,
    group_len: usize,
}

impl PackedLevels {
    fn per_word(&self) -> usize {
        32 / self.bits as usize
    }
}

/// `y = x W^T + b` with W held in stored form.
#[derive(Clone, Debug)]
pub struct Linear {
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
    pub weight: WeightStore,
    pub bias: Option<Vec<f32>>,
}

fn read_i32(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The I32 tensor `name` (GPTQ qweight/qzeros/g_idx); any other dtype is an error naming it.
pub(crate) fn i32_tensor(ckpt: &Checkpoint, name: &str) -> Result<Vec<i32>> {
    let view = ckpt.tensor(name)?;
    if view.info.dtype_name != "I32" {
        return Err(Error::tensor(
            name,
            format!("is {}, expected I32", view.info.dtype_name),
        ));
    }
    Ok(read_i32(view.bytes))
}

fn read_u16(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

#[inline]
fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Dot product with eight independent accumulators (lets the compiler vectorize it).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + s
}

impl Linear {
    /// Full-precision weight given as f32 (tests, small tensors).
    pub fn from_f32(
        name: &str,
        out_features: usize,
        in_features: usize,
        w: Vec<f32>,
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        Self::checked(name, out_features, in_features, WeightStore::F32(w), bias)
    }

    /// Full-precision weight from little-endian checkpoint bytes of `dtype`.
    pub fn from_bytes(
        name: &str,
        dtype: DType,
        out_features: usize,
        in_features: usize,
        bytes: &[u8],
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        let store = match dtype {
            DType::BF16 => WeightStore::BF16(read_u16(bytes)),
            DType::F16 => WeightStore::F16(read_u16(bytes)),
            DType::F32 => WeightStore::F32(dtype::to_f32(DType::F32, bytes)),
            DType::I32 => {
                return Err(Error::tensor(
                    name,
                    "is I32; expected a BF16, F16 or F32 weight",
                ));
            }
        };
        Self::checked(name, out_features, in_features, store, bias)
    }

    /// Packs unpacked GPTQ levels (see `export::gptq_v1::unpack`).
    pub fn from_quantized(
        name: &str,
        ql: &QuantizedLinear,
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        let bits = ql.scheme.bits as u32;
        let per_word = 32 / bits as usize;
        let (n_out, k_in) = (ql.out_features, ql.in_features);
        if k_in % per_word != 0 {
            return Err(Error::tensor(
                name,
                format!("in_features {k_in} is not a multiple of {per_word} ({bits}-bit packing)"),
            ));
        }
        let groups = ql.num_groups();
        let words_per_row = k_in / per_word;
        let mut words = vec![0u32; n_out * words_per_row];
        words
            .par_chunks_mut(words_per_row.max(1))
            .enumerate()
            .for_each(|(n, row)| {
                for (w, word) in row.iter_mut().enumerate() {
                    let mut v = 0u32;
                    for j in 0..per_word {
                        v |= (ql.q[n * k_in + w * per_word + j] as u32) << (bits as usize * j);
                    }
                    *word = v;
                }
            });
        let mut scales = vec![0f32; n_out * groups];
        let mut zeros = vec![0f32; n_out * groups];
        for g in 0..groups {
            for n in 0..n_out {
                scales[n * groups + g] = ql.scales[g * n_out + n];
                zeros[n * groups + g] = ql.zeros[g * n_out + n] as f32;
            }
        }
        let group_len = ql.scheme.group_len(k_in);
        let sequential = ql
            .g_idx
            .iter()
            .enumerate()
            .all(|(k, &g)| g as usize == k / group_len);
        let packed = PackedLevels {
            bits,
            words,
            scales,
            zeros,
            groups,
            g_idx: if sequential && group_len % per_word == 0 {
                None
            } else {
                Some(ql.g_idx.clone())
            },
            group_len,
        };
        Self::checked(name, n_out, k_in, WeightStore::Gptq(packed), bias)
    }

    fn checked(
        name: &str,
        out_features: usize,
        in_features: usize,
        weight: WeightStore,
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        let want = out_features * in_features;
        let got = match &weight {
            WeightStore::BF16(v) | WeightStore::F16(v) => v.len(),
            WeightStore::F32(v) => v.len(),
            WeightStore::Gptq(p) => p.words.len() * p.per_word(),
        };
        if got != want {
            return Err(Error::tensor(
                name,
                format!("holds {got} weights, expected {out_features} x {in_features} = {want}"),
            ));
        }
        if let Some(b) = &bias {
            if b.len() != out_features {
                return Err(Error::tensor(
                    format!("{name}.bias"),
                    format!("has {} values, expected {out_features}", b.len()),
                ));
            }
        }
        Ok(Linear {
            name: name.to_string(),
            in_features,
            out_features,
            weight,
            bias,
        })
    }

    /// Loads `{prefix}.weight` (full precision) or `{prefix}.qweight/qzeros/scales/g_idx` (GPTQ
    /// v1, needs `scheme`), plus `{prefix}.bias` when `has_bias`.
    pub fn load(
        ckpt: &Checkpoint,
        prefix: &str,
        out_features: usize,
        in_features: usize,
        has_bias: bool,
        scheme: Option<&QuantScheme>,
    ) -> Result<Self> {
        let linear = Self::load_stored(ckpt, prefix, out_features, in_features, has_bias, scheme);
        // The weights now live in our own buffers: drop the checkpoint's mapped pages so they
        // do not double the resident size of the model.
        for suffix in ["weight", "bias", "qweight", "qzeros", "scales", "g_idx"] {
            ckpt.release(&format!("{prefix}.{suffix}"));
        }
        linear
    }

    fn load_stored(
        ckpt: &Checkpoint,
        prefix: &str,
        out_features: usize,
        in_features: usize,
        has_bias: bool,
        scheme: Option<&QuantScheme>,
    ) -> Result<Self> {
        let bias = if has_bias {
            let name = format!("{prefix}.bias");
            let view = ckpt.tensor(&name)?;
            Some(view.to_f32_finite()?)
        } else {
            None
        };
        let wname = format!("{prefix}.weight");
        if ckpt.contains(&wname) {
            let view = ckpt.tensor(&wname)?;
            if view.info.shape != [out_features, in_features] {
                return Err(Error::tensor(
                    &wname,
                    format!(
                        "has shape {:?}, expected [{out_features}, {in_features}]",
                        view.info.shape
                    ),
                ));
            }
            return Self::from_bytes(
                &wname,
                view.float_dtype()?,
                out_features,
                in_features,
                view.bytes,
                bias,
            );
        }
        let qname = format!("{prefix}.qweight");
        if !ckpt.contains(&qname) {
            return Err(Error::tensor(
                &wname,
                format!(
                    "missing from {} (and no {qname} either)",
                    ckpt.dir.display()
                ),
            ));
        }
        let scheme = scheme.ok_or_else(|| {
            Error::tensor(
                &qname,
                "is GPTQ-packed but config.json has no usable quantization_config (bits, group_size)",
            )
        })?;
        let int_tensor = |suffix: &str| i32_tensor(ckpt, &format!("{prefix}.{suffix}"));
        let qweight = int_tensor("qweight")?;
        let qzeros = int_tensor("qzeros")?;
        let sname = format!("{prefix}.scales");
        let scales = ckpt.tensor(&sname)?.to_f32_finite()?;
        let gname = format!("{prefix}.g_idx");
        let g_idx = if ckpt.contains(&gname) {
            int_tensor("g_idx")?
        } else {
            let gl = scheme.group_len(in_features);
            (0..in_features).map(|k| (k / gl) as i32).collect()
        };
        let ql = gptq_v1::unpack(
            prefix,
            scheme,
            &qweight,
            &qzeros,
            &scales,
            &g_idx,
            out_features,
            in_features,
        )?;
        Self::from_quantized(prefix, &ql, bias)
    }

    /// Bytes the weight occupies in memory.
    pub fn weight_bytes(&self) -> usize {
        match &self.weight {
            WeightStore::BF16(v) | WeightStore::F16(v) => v.len() * 2,
            WeightStore::F32(v) => v.len() * 4,
            WeightStore::Gptq(p) => p.words.len() * 4 + (p.scales.len() + p.zeros.len()) * 4,
        }
    }

    /// Writes rows `n0..n0 + rows` of W as f32 into `out` ([rows, in_features]).
    #[inline(always)]
    pub fn dequantize_rows(&self, n0: usize, rows: usize, out: &mut [f32]) {
        let k_in = self.in_features;
        let out = &mut out[..rows * k_in];
        match &self.weight {
            WeightStore::BF16(v) => {
                for (d, s) in out.iter_mut().zip(&v[n0 * k_in..(n0 + rows) * k_in]) {
                    *d = bf16_to_f32(*s);
                }
            }
            WeightStore::F16(v) => {
                for (d, s) in out.iter_mut().zip(&v[n0 * k_in..(n0 + rows) * k_in]) {
                    *d = f16::from_bits(*s).to_f32();
                }
            }
            WeightStore::F32(v) => out.copy_from_slice(&v[n0 * k_in..(n0 + rows) * k_in]),
            WeightStore::Gptq(p) => {
                let per_word = p.per_word();
                let wpr = k_in / per_word;
                let mask = (1u32 << p.bits) - 1;
                for r in 0..rows {
                    let n = n0 + r;
                    let words = &p.words[n * wpr..(n + 1) * wpr];
                    let scales = &p.scales[n * p.groups..(n + 1) * p.groups];
                    let zeros = &p.zeros[n * p.groups..(n + 1) * p.groups];
                    let dst = &mut out[r * k_in..(r + 1) * k_in];
                    match &p.g_idx {
                        None => {
                            let words_per_group = p.group_len / per_word;
                            for (g, gw) in words.chunks(words_per_group).enumerate() {
                                let (s, z) = (scales[g], zeros[g]);
                                let base = g * p.group_len;
                                for (w, &word) in gw.iter().enumerate() {
                                    let d =
                                        &mut dst[base + w * per_word..base + (w + 1) * per_word];
                                    for (j, v) in d.iter_mut().enumerate() {
                                        *v = s
                                            * (((word >> (p.bits as usize * j)) & mask) as f32 - z);
                                    }
                                }
                            }
                        }
                        Some(g_idx) => {
                            for (k, v) in dst.iter_mut().enumerate() {
                                let word = words[k / per_word];
                                let q = (word >> (p.bits as usize * (k % per_word))) & mask;
                                let g = g_idx[k] as usize;
                                *v = scales[g] * (q as f32 - zeros[g]);
                            }
                        }
                    }
                }
            }
        }
    }

    /// One row of W as f32 (embedding lookup when this is the embedding table).
    pub fn row(&self, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.in_features];
        self.dequantize_rows(n, 1, &mut out);
        out
    }

    /// Output rows `n0..n0 + out.len() / t` for all `t` inputs, written transposed
    /// (`out[r * t + s]`). Runs the AVX2 build of the same code when the CPU has it: the
    /// compiler then vectorizes the dequantization and the dots 8 wide. Both builds sum in the
    /// same order (no FMA contraction in Rust), so results do not depend on the CPU.
    fn compute_tile(&self, n0: usize, buf: &mut [f32], x: &[f32], t: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above).
                unsafe { self.compute_tile_avx2(n0, buf, x, t, out) };
                return;
            }
        }
        self.compute_tile_generic(n0, buf, x, t, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn compute_tile_avx2(
        &self,
        n0: usize,
        buf: &mut [f32],
        x: &[f32],
        t: usize,
        out: &mut [f32],
    ) {
        self.compute_tile_generic(n0, buf, x, t, out)
    }

    #[inline(always)]
    fn compute_tile_generic(
        &self,
        n0: usize,
        buf: &mut [f32],
        x: &[f32],
        t: usize,
        out: &mut [f32],
    ) {
        let k_in = self.in_features;
        let rows = out.len() / t;
        self.dequantize_rows(n0, rows, buf);
        if t >= GEMM_MIN_ROWS {
            // matrixmultiply selects its AVX/FMA kernels at run time itself.
            let w = ArrayView2::from_shape((rows, k_in), &buf[..rows * k_in]).expect("tile shape");
            let xv = ArrayView2::from_shape((t, k_in), x).expect("input shape");
            let mut o =
                ndarray::ArrayViewMut2::from_shape((rows, t), &mut *out).expect("out shape");
            general_mat_mul(1.0, &w, &xv.t(), 0.0, &mut o);
        } else {
            for r in 0..rows {
                let w = &buf[r * k_in..(r + 1) * k_in];
                for s in 0..t {
                    out[r * t + s] = dot(w, &x[s * k_in..(s + 1) * k_in]);
                }
            }
        }
        if let Some(b) = &self.bias {
            for r in 0..rows {
                for s in 0..t {
                    out[r * t + s] += b[n0 + r];
                }
            }
        }
    }

    /// `x` is [t, in_features] row-major; returns [t, out_features].
    pub fn forward(&self, x: &[f32], t: usize) -> Vec<f32> {
        let (k_in, n_out) = (self.in_features, self.out_features);
        assert_eq!(
            x.len(),
            t * k_in,
            "{}: input is not [{t}, {k_in}]",
            self.name
        );
        if t == 0 {
            return Vec::new();
        }
        // Output transposed ([n_out, t]) so each task owns a contiguous block.
        let mut yt = vec![0f32; n_out * t];
        yt.par_chunks_mut(TILE_ROWS * t).enumerate().for_each_init(
            || vec![0f32; TILE_ROWS * k_in],
            |buf, (tile, out)| self.compute_tile(tile * TILE_ROWS, buf, x, t, out),
        );
        if t == 1 {
            return yt;
        }
        let mut y = vec![0f32; t * n_out];
        for n in 0..n_out {
            for s in 0..t {
                y[s * n_out + n] = yt[n * t + s];
            }
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(
        w: &[f32],
        b: Option<&[f32]>,
        x: &[f32],
        t: usize,
        n: usize,
        k: usize,
    ) -> Vec<f32> {
        let mut y = vec![0f64; t * n];
        for s in 0..t {
            for o in 0..n {
                let mut acc = b.map(|b| b[o] as f64).unwrap_or(0.0);
                for i in 0..k {
                    acc += w[o * k + i] as f64 * x[s * k + i] as f64;
                }
                y[s * n + o] = acc;
            }
        }
        y.into_iter().map(|v| v as f32).collect()
    }

    fn lcg(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0 * scale
            })
            .collect()
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * scale,
                "index {i}: {x} vs {y} (scale {scale})"
            );
        }
    }

    #[test]
    fn bf16_linear_matches_f32_reference() {
        let (n, k) = (37, 72);
        let w32 = lcg(1, n * k, 0.1);
        let bytes = dtype::from_f32(DType::BF16, &w32);
        let w_rounded = dtype::to_f32(DType::BF16, &bytes);
        let bias = lcg(2, n, 0.5);
        let lin = Linear::from_bytes("t", DType::BF16, n, k, &bytes, Some(bias.clone())).unwrap();
        for t in [1, 3, 5, 17] {
            let x = lcg(3 + t as u64, t * k, 1.0);
            let want = reference(&w_rounded, Some(&bias), &x, t, n, k);
            assert_close(&lin.forward(&x, t), &want, 1e-5);
        }
    }

    #[test]
    fn f16_linear_matches_f32_reference() {
        let (n, k) = (20, 40);
        let w32 = lcg(4, n * k, 0.1);
        let bytes = dtype::from_f32(DType::F16, &w32);
        let w_rounded = dtype::to_f32(DType::F16, &bytes);
        let lin = Linear::from_bytes("t", DType::F16, n, k, &bytes, None).unwrap();
        let x = lcg(5, 2 * k, 1.0);
        assert_close(
            &lin.forward(&x, 2),
            &reference(&w_rounded, None, &x, 2, n, k),
            1e-5,
        );
    }

    fn sample_quantized(bits: u8, gs: i64, n: usize, k: usize, permute: bool) -> QuantizedLinear {
        let scheme = QuantScheme::new(bits, gs, true).unwrap();
        let maxq = scheme.maxq();
        let g = scheme.num_groups(k);
        let glen = scheme.group_len(k);
        let mut g_idx: Vec<u32> = (0..k).map(|i| (i / glen) as u32).collect();
        if permute {
            g_idx.reverse();
        }
        QuantizedLinear {
            scheme,
            out_features: n,
            in_features: k,
            q: (0..n * k)
                .map(|i| ((i * 37 + i / 5) as u32 % (maxq + 1)) as u8)
                .collect(),
            scales: (0..g * n).map(|i| 0.01 + (i % 13) as f32 * 1e-3).collect(),
            zeros: (0..g * n).map(|i| 1 + (i as u32 * 7) % maxq).collect(),
            g_idx,
        }
    }

    #[test]
    fn quantized_linear_equals_dequantize_then_matmul() {
        for (bits, gs, permute) in [
            (4, 32, false),
            (8, 64, false),
            (4, -1, false),
            (4, 32, true),
            (8, 32, true),
        ] {
            let (n, k) = (40, 128);
            let ql = sample_quantized(bits, gs, n, k, permute);
            let w = ql.dequantize();
            let bias = lcg(9, n, 0.3);
            let lin = Linear::from_quantized("t", &ql, Some(bias.clone())).unwrap();
            assert_eq!(
                matches!(&lin.weight, WeightStore::Gptq(p) if p.g_idx.is_some()),
                permute
            );
            for t in [1, 2, 6] {
                let x = lcg(10 + t as u64, t * k, 1.0);
                let want = reference(&w, Some(&bias), &x, t, n, k);
                assert_close(&lin.forward(&x, t), &want, 1e-5);
            }
        }
    }

    #[test]
    fn packed_gptq_round_trips_through_the_file_format() {
        let ql = sample_quantized(4, 32, 16, 64, false);
        let packed = gptq_v1::pack(&ql, DType::F32);
        let scales = dtype::to_f32(DType::F32, &packed.scales);
        let back = gptq_v1::unpack(
            "t",
            &ql.scheme,
            &packed.qweight,
            &packed.qzeros,
            &scales,
            &packed.g_idx,
            16,
            64,
        )
        .unwrap();
        let lin = Linear::from_quantized("t", &back, None).unwrap();
        let mut rows = vec![0f32; 16 * 64];
        lin.dequantize_rows(0, 16, &mut rows);
        assert_eq!(rows, ql.dequantize());
    }

    #[test]
    fn wrong_sizes_are_reported() {
        let err = Linear::from_f32("layer.q", 4, 4, vec![0.0; 15], None).unwrap_err();
        assert!(err.to_string().contains("layer.q"), "{err}");
        let err = Linear::from_f32("layer.q", 4, 4, vec![0.0; 16], Some(vec![0.0; 3])).unwrap_err();
        assert!(err.to_string().contains("bias"), "{err}");
    }
}
