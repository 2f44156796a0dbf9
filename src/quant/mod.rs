//! Weight quantization: the integer grid (`scheme`, `grid`), the methods behind one trait
//! (`rtn`, the `gptq` solver; AWQ plugs in beside them), and the layer-streaming `pipeline`.

pub mod calib_forward;
pub mod gptq;
pub mod gptq_backend;
pub mod gptq_pipeline;
pub mod grid;
pub mod pipeline;
pub mod resume;
pub mod rtn;
pub mod scheme;
pub mod stats;

use rayon::prelude::*;

use crate::dtype::DType;
use crate::error::Result;
pub use scheme::QuantScheme;

/// A full-precision linear weight, HF layout [out_features, in_features], row-major.
pub struct Weight<'a> {
    pub name: &'a str,
    pub data: &'a [f32],
    pub out_features: usize,
    pub in_features: usize,
    /// Dtype the scales will be stored in.
    pub scale_dtype: DType,
}

/// The result of quantizing one linear: integer levels plus per-group parameters, in the
/// orientation the math uses. `export` packs it into a file format.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedLinear {
    pub scheme: QuantScheme,
    pub out_features: usize,
    pub in_features: usize,
    /// Levels in 0..=maxq, [out_features, in_features] row-major.
    pub q: Vec<u8>,
    /// [num_groups, out_features], already rounded to the stored dtype.
    pub scales: Vec<f32>,
    /// [num_groups, out_features], each in 1..=maxq (see `grid::GroupParams::fit`).
    pub zeros: Vec<u32>,
    /// Group of each input column, [in_features].
    pub g_idx: Vec<u32>,
}

impl QuantizedLinear {
    pub fn num_groups(&self) -> usize {
        self.scales.len() / self.out_features
    }

    /// The weight a loader reconstructs: scale[g_idx[k], n] * (q[n, k] - zero[g_idx[k], n]).
    pub fn dequantize(&self) -> Vec<f32> {
        let (n_out, k_in) = (self.out_features, self.in_features);
        let mut w = vec![0f32; n_out * k_in];
        w.par_chunks_mut(k_in).enumerate().for_each(|(n, row)| {
            for (k, v) in row.iter_mut().enumerate() {
                let g = self.g_idx[k] as usize * n_out + n;
                *v = self.scales[g] * (self.q[n * k_in + k] as f32 - self.zeros[g] as f32);
            }
        });
        w
    }
}

/// One quantization algorithm (mistral.rs `mistralrs-quant` style: one file per method).
pub trait QuantMethod: Sync {
    /// Short name recorded in the manifest and config ("rtn", "gptq", "awq").
    fn name(&self) -> &'static str;
    fn scheme(&self) -> &QuantScheme;
    fn quantize(&self, weight: &Weight<'_>) -> Result<QuantizedLinear>;
}
