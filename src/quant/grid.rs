//! Fitting one group's scale and zero point, and mapping values onto the integer grid.
//!
//! The min/max fit follows the GPTQ reference quantizer (IST-DASLab `gptq/quant.py`,
//! `Quantizer.find_params`): the range always includes 0; symmetric grids use
//! `scale = 2*max|w| / maxq` with the zero at (maxq+1)/2; an all-zero group gets the range
//! [-1, 1]. Rounding is half-to-even like `torch.round`.

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
    /// Fits the grid to `values` (one group of one row).
    ///
    /// GPTQ v1 stores `zero - 1`, so an asymmetric zero of 0 cannot be written (it would read
    /// back as 2^bits); such groups get zero 1 and a scale stretched to keep `max` on the grid
    /// (GPTQModel `utils/model.py` convert_gptq_v1_to_v2 documents the quirk).
    pub fn fit(values: &[f32], scheme: &QuantScheme, store: DType, tensor: &str) -> Result<Self> {
        let maxq = scheme.maxq() as f32;
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
}
