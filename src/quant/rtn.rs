//! Round-to-nearest group quantization: each (row, group) gets a min/max grid and every
//! weight its nearest level. No calibration data; the baseline the other methods must beat.

use rayon::prelude::*;

use crate::backend::Backend;
use crate::error::Result;
use crate::quant::grid::GroupParams;
use crate::quant::{QuantMethod, QuantScheme, QuantizedLinear, Weight};

pub struct Rtn {
    pub scheme: QuantScheme,
}

impl QuantMethod for Rtn {
    fn name(&self) -> &'static str {
        "rtn"
    }

    fn scheme(&self) -> &QuantScheme {
        &self.scheme
    }

    fn quantize(&self, w: &Weight<'_>) -> Result<QuantizedLinear> {
        let s = self.scheme;
        let (n_out, k_in) = (w.out_features, w.in_features);
        s.check_shape(w.name, n_out, k_in)?;
        let glen = s.group_len(k_in);
        let groups = s.num_groups(k_in);
        let maxq = s.maxq();
        // Rows are independent: quantize them in parallel, each writing its own slice.
        let rows: Vec<(Vec<u8>, Vec<GroupParams>)> = w
            .data
            .par_chunks(k_in)
            .map(|row| {
                let mut q = vec![0u8; k_in];
                let mut params = Vec::with_capacity(groups);
                for (g, chunk) in row.chunks(glen).enumerate() {
                    let p = GroupParams::fit(chunk, &s, w.scale_dtype, w.name)?;
                    for (j, &x) in chunk.iter().enumerate() {
                        q[g * glen + j] = p.quantize(x, maxq) as u8;
                    }
                    params.push(p);
                }
                Ok((q, params))
            })
            .collect::<Result<_>>()?;
        let mut q = Vec::with_capacity(n_out * k_in);
        let mut scales = vec![0f32; groups * n_out];
        let mut zeros = vec![0u32; groups * n_out];
        for (n, (row_q, params)) in rows.into_iter().enumerate() {
            q.extend_from_slice(&row_q);
            for (g, p) in params.into_iter().enumerate() {
                scales[g * n_out + n] = p.scale;
                zeros[g * n_out + n] = p.zero;
            }
        }
        Ok(QuantizedLinear {
            scheme: s,
            out_features: n_out,
            in_features: k_in,
            q,
            scales,
            zeros,
            g_idx: (0..k_in).map(|k| (k / glen) as u32).collect(),
        })
    }
}

/// RTN computed by a compute backend (`quantize --device cuda`): the same rules and the same
/// bytes as `Rtn` (tests/backend_ops.rs checks the GPU against it).
pub struct RtnOn<'a, B: Backend> {
    pub backend: &'a B,
    pub scheme: QuantScheme,
}

impl<B: Backend> QuantMethod for RtnOn<'_, B> {
    fn name(&self) -> &'static str {
        "rtn"
    }

    fn scheme(&self) -> &QuantScheme {
        &self.scheme
    }

    fn quantize(&self, w: &Weight<'_>) -> Result<QuantizedLinear> {
        self.backend.quantize_rtn(&self.scheme, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    fn weight(data: &[f32], n: usize, k: usize) -> Weight<'_> {
        Weight {
            name: "t",
            data,
            out_features: n,
            in_features: k,
            scale_dtype: DType::F32,
        }
    }

    #[test]
    fn error_is_at_most_half_a_step_inside_the_range() {
        let (n, k) = (16, 64);
        let data: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        for sym in [true, false] {
            let rtn = Rtn {
                scheme: QuantScheme::new(4, 32, sym).unwrap(),
            };
            let ql = rtn.quantize(&weight(&data, n, k)).unwrap();
            let deq = ql.dequantize();
            for (i, (a, b)) in data.iter().zip(&deq).enumerate() {
                let g = (i % k) / 32;
                let step = ql.scales[g * n + i / k];
                assert!(
                    (a - b).abs() <= step / 2.0 + 1e-6,
                    "sym={sym} i={i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn eight_bit_is_much_closer_than_four_bit() {
        let (n, k) = (8, 128);
        let data: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let err = |bits| {
            let ql = Rtn {
                scheme: QuantScheme::new(bits, 128, true).unwrap(),
            }
            .quantize(&weight(&data, n, k))
            .unwrap();
            crate::quant::stats::ErrorStats::between(&data, &ql.dequantize()).rel_fro
        };
        assert!(err(8) * 8.0 < err(4), "int8 {} vs int4 {}", err(8), err(4));
    }

    #[test]
    fn shape_not_packable_is_an_error() {
        let data = vec![0.5f32; 3 * 12];
        let rtn = Rtn {
            scheme: QuantScheme::new(4, -1, true).unwrap(),
        };
        let err = rtn.quantize(&weight(&data, 3, 12)).unwrap_err();
        assert!(err.to_string().contains("multiples of 8"), "{err}");
    }
}
