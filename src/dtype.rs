//! Element types of checkpoint tensors and conversions to and from f32.

use half::{bf16, f16};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The element types hy-quant reads and writes. Names are the safetensors header spellings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    #[serde(rename = "BF16")]
    BF16,
    #[serde(rename = "F16")]
    F16,
    #[serde(rename = "F32")]
    F32,
    #[serde(rename = "I32")]
    I32,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::BF16 | DType::F16 => 2,
            DType::F32 | DType::I32 => 4,
        }
    }

    /// The safetensors header spelling ("BF16", "F16", "F32", "I32").
    pub fn st_name(self) -> &'static str {
        match self {
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::F32 => "F32",
            DType::I32 => "I32",
        }
    }

    pub fn from_st_name(name: &str) -> Option<Self> {
        Some(match name {
            "BF16" => DType::BF16,
            "F16" => DType::F16,
            "F32" => DType::F32,
            "I32" => DType::I32,
            _ => return None,
        })
    }

    /// `torch_dtype` spelling used in config.json.
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            DType::F32 => "float32",
            DType::I32 => "int32",
        }
    }

    pub fn from_torch_name(name: &str) -> Option<Self> {
        Some(match name {
            "bfloat16" | "bf16" => DType::BF16,
            "float16" | "f16" | "fp16" | "half" => DType::F16,
            "float32" | "f32" | "fp32" | "float" => DType::F32,
            _ => return None,
        })
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::BF16 | DType::F16 | DType::F32)
    }

    /// Rounds `x` to the nearest value representable in this float type (round to nearest even).
    pub fn round_f32(self, x: f32) -> f32 {
        match self {
            DType::BF16 => bf16::from_f32(x).to_f32(),
            DType::F16 => f16::from_f32(x).to_f32(),
            DType::F32 | DType::I32 => x,
        }
    }

    /// Largest finite value of this float type.
    pub fn max_finite(self) -> f32 {
        match self {
            DType::BF16 => bf16::MAX.to_f32(),
            DType::F16 => f16::MAX.to_f32(),
            DType::F32 | DType::I32 => f32::MAX,
        }
    }

    /// Smallest positive (subnormal) value of this float type.
    pub fn min_positive(self) -> f32 {
        match self {
            DType::BF16 => bf16::from_bits(1).to_f32(),
            DType::F16 => f16::from_bits(1).to_f32(),
            DType::F32 | DType::I32 => f32::from_bits(1),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.torch_name())
    }
}

/// Decodes little-endian float bytes of `dtype` into f32. `bytes.len()` must be a multiple of
/// the element size (checked by the caller that read the header).
pub fn to_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let n = bytes.len() / dtype.size();
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, dst)| {
        let src = &bytes[c * CHUNK * dtype.size()..][..dst.len() * dtype.size()];
        match dtype {
            DType::BF16 => {
                for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                    *d = bf16::from_le_bytes([s[0], s[1]]).to_f32();
                }
            }
            DType::F16 => {
                for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                    *d = f16::from_le_bytes([s[0], s[1]]).to_f32();
                }
            }
            DType::F32 => {
                for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                }
            }
            DType::I32 => {
                for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    *d = i32::from_le_bytes([s[0], s[1], s[2], s[3]]) as f32;
                }
            }
        }
    });
    out
}

/// Encodes f32 values as little-endian bytes of float type `dtype` (round to nearest even).
pub fn from_f32(dtype: DType, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    match dtype {
        DType::BF16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        DType::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        DType::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::I32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&(*v as i32).to_le_bytes())),
    }
    out
}

/// Encodes i32 values as little-endian bytes.
pub fn i32_bytes(values: &[i32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_each_float_type() {
        let xs = [0.0f32, -1.5, 3.140625, 65504.0, -0.000061035156];
        for dt in [DType::BF16, DType::F16, DType::F32] {
            let back = to_f32(dt, &from_f32(dt, &xs));
            for (a, b) in xs.iter().zip(&back) {
                assert_eq!(dt.round_f32(*a), *b, "{dt}");
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is exactly between two bf16 values (1 and 1 + 2^-7): ties go to even (1.0).
        assert_eq!(DType::BF16.round_f32(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(DType::BF16.round_f32(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
    }
}
