//! Fitting one group's scale and zero point, and mapping values onto the integer grid.
//!
//! The min/max fit follows the GPTQ reference quantizer (IST-DASLab `gptq/quant.py`,
//! `Quantizer.find_params`): the range always includes 0; symmetric grids use
//! `scale = 2*max|w| / maxq` with the zero at (maxq+1)/2; an all-zero group gets the range
//! [-1, 1]. Rounding is half-to-even like `torch.round`.

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::quant::scheme::QuantScheme;

/// Round half to even, like `torch.round`. `f32::round_ties_even` compiles to a libm call on
/// baseline x86-64 (no SSE4.1), the hottest instruction of RTN; adding and subtracting
/// 1.5 * 2^23 makes the FPU's default rounding (nearest, ties to even) do it. Exact for
/// |x| < 2^22; larger floats are integers already.
#[inline(always)]
pub fn round_half_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    if x.abs() < 4_194_304.0 {
        (x + MAGIC) - MAGIC
    } else {
        x
    }
}

/// Scale and zero of one (group, output row). `scale` is already rounded to the dtype it is
/// stored in, so the integers are chosen against the scale loaders will actually use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupParams {
    pub scale: f32,
    pub zero: u32,
}

impl GroupParams {
    /// Fits the grid to `values` (one group of one row) with min/max.
    ///
    /// GPTQ v1 stores `zero - 1`, so an asymmetric zero of 0 cannot be written (it would read
    /// back as 2^bits); such groups get zero 1 and a scale stretched to keep `max` on the grid
    /// (GPTQModel `utils/model.py` convert_gptq_v1_to_v2 documents the quirk).
    pub fn fit(values: &[f32], scheme: &QuantScheme, store: DType, tensor: &str) -> Result<Self> {
        let (lo, hi) = fit_range(values, scheme);
        Self::from_range(lo, hi, scheme, store, tensor)
    }

    /// Fits the grid to `values` the way `fit` selects.
    pub fn fit_with(
        values: &[f32],
        scheme: &QuantScheme,
        store: DType,
        tensor: &str,
        fit: GridFit,
    ) -> Result<Self> {
        match fit {
            GridFit::MinMax => Self::fit(values, scheme, store, tensor),
            GridFit::ClipSearch => Self::fit_clipped(values, scheme, store, tensor),
        }
    }

    /// The range search of the GPTQ reference quantizer (`Quantizer.find_params` with
    /// `mse=True`, `grid=100`, `maxshrink=0.8`): the min/max range shrunk by p = 1 - i/100,
    /// i = 0..80, and the grid with the smallest Σ|w - dq(w)|^norm kept (the first on ties).
    /// The reference's norm is 2.4; here it is 2.5, |d|²·√|d|, so that the error is made of
    /// correctly rounded operations only and the CUDA sweep (`gq_sweep_block`), which sums in
    /// the same order (`warp_order_sum`), picks the same grid bit for bit.
    pub fn fit_clipped(
        values: &[f32],
        scheme: &QuantScheme,
        store: DType,
        tensor: &str,
    ) -> Result<Self> {
        let (lo, hi) = fit_range(values, scheme);
        let maxq = scheme.maxq();
        let mut best = Self::from_range(lo, hi, scheme, store, tensor)?;
        let mut best_err = clip_error(values, &best, maxq);
        for i in 1..CLIP_STEPS {
            let p = 1.0f32 - i as f32 / CLIP_GRID as f32;
            let cand = Self::from_range(p * lo, p * hi, scheme, store, tensor)?;
            let err = clip_error(values, &cand, maxq);
            if err < best_err {
                best = cand;
                best_err = err;
            }
        }
        Ok(best)
    }

    /// The grid of the range [lo, hi] (already including 0, symmetric when the scheme is).
    fn from_range(
        lo: f32,
        hi: f32,
        scheme: &QuantScheme,
        store: DType,
        tensor: &str,
    ) -> Result<Self> {
        let maxq = scheme.maxq() as f32;
        let mut scale = (hi - lo) / maxq;
        let mut zero = if scheme.sym {
            1 << (scheme.bits - 1)
        } else {
            round_half_even(-lo / scale) as u32
        };
        if !scheme.sym && zero == 0 {
            zero = 1;
            scale = hi / (maxq - 1.0);
        }
        let stored = store.round_f32(scale);
        if !stored.is_finite() {
            return Err(Error::tensor(
                tensor,
                format!(
                    "group scale {scale:e} overflows {store} (max {:e}); store scales in bf16 or f32",
                    store.max_finite()
                ),
            ));
        }
        Ok(GroupParams {
            scale: if stored > 0.0 {
                stored
            } else {
                store.min_positive()
            },
            zero,
        })
    }

    /// The integer level of `x`: clamp(round(x / scale) + zero, 0, maxq).
    #[inline]
    pub fn quantize(&self, x: f32, maxq: u32) -> u32 {
        let q = round_half_even(x / self.scale) + self.zero as f32;
        q.clamp(0.0, maxq as f32) as u32
    }

    #[inline]
    pub fn dequantize(&self, q: u32) -> f32 {
        self.scale * (q as f32 - self.zero as f32)
    }
}

/// How a group's range is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GridFit {
    /// min and max of the group (the reference default; RTN always uses it).
    #[default]
    MinMax,
    /// `GroupParams::fit_clipped`.
    ClipSearch,
}

/// Shrink steps of the clip search: 1 - i/CLIP_GRID for i < CLIP_STEPS (reference: grid 100,
/// maxshrink 0.8).
pub const CLIP_GRID: u32 = 100;
pub const CLIP_STEPS: u32 = 80;

/// The range min/max fitting starts from: it includes 0, is symmetric for symmetric grids,
/// and an all-zero group gets [-1, 1] (IST-DASLab `quant.py` `find_params`).
fn fit_range(values: &[f32], scheme: &QuantScheme) -> (f32, f32) {
    let (mut lo, mut hi) = values
        .iter()
        .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if scheme.sym {
        hi = hi.max(-lo);
        if lo < 0.0 {
            lo = -hi;
        }
    }
    if lo == 0.0 && hi == 0.0 {
        lo = -1.0;
        hi = 1.0;
    }
    (lo, hi)
}

/// Σ |w - dq(w)|^2.5 over the group, summed like one CUDA warp does (`warp_order_sum`).
/// The hot loop of `fit_clipped` (80 calls per group): written over 32 lanes at a time with the
/// level kept in f32 (an integer in [0, maxq], so `scale * (level - zero)` is what
/// `dequantize(quantize(x))` computes), which the compiler turns into SIMD; the result is the
/// same f32 bit for bit (`clip_error_matches_the_scalar_definition`).
fn clip_error(values: &[f32], p: &GroupParams, maxq: u32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { clip_error_avx2(values, p, maxq) };
    }
    clip_error_body(values, p, maxq)
}

/// `clip_error_body` compiled for AVX2 (8 lanes instead of SSE2's 4). Only plain adds,
/// multiplies, divides and square roots, no FMA contraction: the same bits as the SSE2 build.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn clip_error_avx2(values: &[f32], p: &GroupParams, maxq: u32) -> f32 {
    clip_error_body(values, p, maxq)
}

#[inline(always)]
fn clip_error_body(values: &[f32], p: &GroupParams, maxq: u32) -> f32 {
    let (s, z, mq) = (p.scale, p.zero as f32, maxq as f32);
    // max/min instead of clamp (whose assert stops vectorization): the same for finite x.
    let err = |x: f32| {
        let q = (round_half_even(x / s) + z).max(0.0).min(mq);
        let d = (x - s * (q - z)).abs();
        d * d * d.sqrt()
    };
    let mut lanes = [0f32; 32];
    let mut chunks = values.chunks_exact(32);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += err(x);
        }
    }
    for (lane, &x) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane += err(x);
    }
    butterfly(lanes)
}

/// The xor butterfly (offsets 16, 8, 4, 2, 1) over 32 lane sums: what lane 0 of a warp holds
/// after `__shfl_xor_sync` reductions.
fn butterfly(mut lanes: [f32; 32]) -> f32 {
    let mut o = 16;
    while o > 0 {
        let prev = lanes;
        for (i, l) in lanes.iter_mut().enumerate() {
            *l = prev[i] + prev[i ^ o];
        }
        o /= 2;
    }
    lanes[0]
}

/// The sum a warp computes when lane l adds items l, l + 32, ... in order and the 32 partial
/// sums are combined by an xor butterfly (offsets 16, 8, 4, 2, 1): f32 addition in exactly
/// that order, so the CPU and the GPU agree bit for bit.
pub fn warp_order_sum(items: impl Iterator<Item = f32>) -> f32 {
    let mut lanes = [0f32; 32];
    for (i, v) in items.enumerate() {
        lanes[i % 32] += v;
    }
    butterfly(lanes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheme(bits: u8, sym: bool) -> QuantScheme {
        QuantScheme::new(bits, 128, sym).unwrap()
    }

    #[test]
    fn symmetric_4bit_matches_the_gptq_convention() {
        let p = GroupParams::fit(&[-3.0, 1.0, 0.5], &scheme(4, true), DType::F32, "w").unwrap();
        assert_eq!(p.zero, 8);
        assert!((p.scale - 6.0 / 15.0).abs() < 1e-7);
        assert_eq!(p.quantize(-3.0, 15), 0); // -7.5 rounds to -8 (ties to even)
        assert_eq!(p.quantize(3.0, 15), 15); // 7.5 -> 8, clamped to 15
        assert_eq!(p.quantize(0.0, 15), 8);
    }

    #[test]
    fn asymmetric_grid_covers_min_and_max() {
        let vals = [-1.0f32, 0.25, 2.0];
        let p = GroupParams::fit(&vals, &scheme(8, false), DType::F32, "w").unwrap();
        for v in vals {
            assert!((p.dequantize(p.quantize(v, 255)) - v).abs() <= p.scale / 2.0 + 1e-6);
        }
    }

    #[test]
    fn asymmetric_zero_is_never_zero() {
        // All non-negative: the natural zero is 0, which GPTQ v1 cannot store.
        let vals = [0.0f32, 0.5, 1.0, 3.0];
        let p = GroupParams::fit(&vals, &scheme(4, false), DType::F32, "w").unwrap();
        assert!(p.zero >= 1);
        assert_eq!(p.dequantize(p.quantize(3.0, 15)), 3.0);
        assert_eq!(p.dequantize(p.quantize(0.0, 15)), 0.0);
    }

    #[test]
    fn fast_rounding_matches_round_ties_even() {
        let mut x = -70000.0f32;
        while x < 70000.0 {
            for v in [x, x + 0.5, x + 0.25, -x - 0.5, x * 1e-3] {
                assert_eq!(round_half_even(v), v.round_ties_even(), "{v}");
            }
            x += 0.75;
        }
        for v in [5e6f32, -9e9, f32::MAX, 0.49999997, -0.5, 0.5, 1.5, 2.5] {
            assert_eq!(round_half_even(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn all_zero_group_gets_a_valid_grid() {
        let p = GroupParams::fit(&[0.0; 16], &scheme(4, true), DType::BF16, "w").unwrap();
        assert!(p.scale > 0.0);
        assert_eq!(p.dequantize(p.quantize(0.0, 15)), 0.0);
    }

    #[test]
    fn fp16_scale_overflow_names_the_tensor() {
        let err =
            GroupParams::fit(&[1e6, -2e6], &scheme(4, true), DType::F16, "layers.0.q").unwrap_err();
        assert!(err.to_string().contains("layers.0.q"), "{err}");
        assert!(GroupParams::fit(&[1e6, -2e6], &scheme(4, true), DType::BF16, "w").is_ok());
    }

    #[test]
    fn scale_is_rounded_to_the_store_dtype() {
        let p = GroupParams::fit(&[0.1234567], &scheme(4, true), DType::BF16, "w").unwrap();
        assert_eq!(p.scale, DType::BF16.round_f32(p.scale));
    }

    #[test]
    fn clip_search_never_loses_to_min_max_and_shrinks_outlier_groups() {
        let s = scheme(4, true);
        // One outlier: shrinking the range trades it for finer steps on the rest.
        let mut vals: Vec<f32> = (0..128)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0)
            .collect();
        vals[5] = 1.0;
        let mm = GroupParams::fit(&vals, &s, DType::F16, "w").unwrap();
        let cs = GroupParams::fit_clipped(&vals, &s, DType::F16, "w").unwrap();
        assert!(cs.scale < mm.scale, "{cs:?} vs {mm:?}");
        let (e_mm, e_cs) = (clip_error(&vals, &mm, 15), clip_error(&vals, &cs, 15));
        assert!(e_cs < e_mm, "{e_cs} vs {e_mm}");
        // A uniform group is best served by its full range.
        let flat: Vec<f32> = (0..128).map(|i| (i as f32 - 63.5) / 64.0).collect();
        for bits in [4, 8] {
            for sym in [true, false] {
                let s = scheme(bits, sym);
                let (mm, cs) = (
                    GroupParams::fit(&flat, &s, DType::F32, "w").unwrap(),
                    GroupParams::fit_clipped(&flat, &s, DType::F32, "w").unwrap(),
                );
                let maxq = s.maxq();
                assert!(clip_error(&flat, &cs, maxq) <= clip_error(&flat, &mm, maxq));
            }
        }
        assert_eq!(
            GroupParams::fit_with(&vals, &s, DType::F16, "w", GridFit::MinMax).unwrap(),
            mm
        );
    }

    #[test]
    fn clip_error_matches_the_scalar_definition() {
        // The definition: quantize / dequantize per value, summed in warp order.
        let scalar = |vals: &[f32], p: &GroupParams, maxq: u32| {
            warp_order_sum(vals.iter().map(|&x| {
                let d = (x - p.dequantize(p.quantize(x, maxq))).abs();
                d * d * d.sqrt()
            }))
        };
        let mut rng = crate::rng::SplitMix64(3);
        for len in [1usize, 31, 32, 33, 100, 128, 4096] {
            let vals: Vec<f32> = (0..len).map(|_| (rng.normal() * 0.05) as f32).collect();
            for (bits, sym) in [(4, true), (4, false), (8, true), (8, false)] {
                let s = scheme(bits, sym);
                let maxq = s.maxq();
                for shrink in [1.0f32, 0.9, 0.5, 0.21] {
                    let lo = vals.iter().fold(0f32, |a, &v| a.min(v)) * shrink;
                    let hi = vals.iter().fold(0f32, |a, &v| a.max(v)) * shrink;
                    let (lo, hi) = fit_range(&[lo, hi], &s);
                    let p = GroupParams::from_range(lo, hi, &s, DType::BF16, "w").unwrap();
                    assert_eq!(
                        clip_error(&vals, &p, maxq).to_bits(),
                        scalar(&vals, &p, maxq).to_bits(),
                        "len {len} bits {bits} sym {sym} shrink {shrink}"
                    );
                }
            }
        }
    }

    #[test]
    fn warp_order_sum_is_the_butterfly_of_the_lane_sums() {
        // Values whose f32 sum depends on the order (1e8 + 1 == 1e8 in f32). Lane 0 holds
        // 1e8 and item 32 (whose 1 is lost), lane 16 holds -1e8; the butterfly pairs lane 0
        // with lane 16 first, so the other 37 ones survive. A sequential sum loses 15 of them.
        let mut v = [1.0f32; 40];
        v[0] = 1e8;
        v[16] = -1e8;
        assert_eq!(warp_order_sum(v.iter().copied()), 37.0);
        assert_eq!(v.iter().sum::<f32>(), 23.0);
        assert_eq!(warp_order_sum(std::iter::empty()), 0.0);
    }
}
