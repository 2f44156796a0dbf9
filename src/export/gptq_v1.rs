//! GPTQ "v1" checkpoint format, as vLLM (`gptq`, `gptq_marlin`), transformers/GPTQModel and
//! exllama read it. Facts (see ../shared/formats.md):
//! - `qweight` int32 [K*bits/32, N]: input rows 8r..8r+7 (4-bit) share word row r, row k at
//!   bit offset bits*(k - 8r); no interleave (AutoGPTQ `qlinear_cuda_old.py`, vLLM
//!   `layers/quantization/gptq.py`).
//! - `qzeros` int32 [G, N*bits/32], packed along N the same way, stored as zero - 1.
//! - `scales` [G, N] in the model dtype; `g_idx` int32 [K].

use rayon::prelude::*;
use serde_json::{json, Value};

use crate::dtype::{self, DType};
use crate::error::{Error, Result};
use crate::io::PlannedTensor;
use crate::quant::{QuantScheme, QuantizedLinear};

/// The packed tensors of one linear, ready to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedGptq {
    pub qweight: Vec<i32>,
    pub qzeros: Vec<i32>,
    pub scales: Vec<u8>,
    pub g_idx: Vec<i32>,
}

/// Names, dtypes and shapes of the tensors a linear of this shape becomes, in write order.
pub fn planned_tensors(
    prefix: &str,
    scheme: &QuantScheme,
    out_features: usize,
    in_features: usize,
    scale_dtype: DType,
) -> Vec<PlannedTensor> {
    let pf = scheme.pack_factor();
    let g = scheme.num_groups(in_features);
    let t = |suffix: &str, dtype: DType, shape: Vec<usize>| PlannedTensor {
        name: format!("{prefix}.{suffix}"),
        dtype: dtype.st_name().to_string(),
        nbytes: shape.iter().product::<usize>() * dtype.size(),
        shape,
    };
    vec![
        t("g_idx", DType::I32, vec![in_features]),
        t("qweight", DType::I32, vec![in_features / pf, out_features]),
        t("qzeros", DType::I32, vec![g, out_features / pf]),
        t("scales", scale_dtype, vec![g, out_features]),
    ]
}

/// Packs levels and group parameters into GPTQ v1 tensors.
pub fn pack(ql: &QuantizedLinear, scale_dtype: DType) -> PackedGptq {
    let bits = ql.scheme.bits as usize;
    let pf = ql.scheme.pack_factor();
    let mask = ql.scheme.maxq();
    let (n_out, k_in) = (ql.out_features, ql.in_features);
    let groups = ql.num_groups();

    // Build the words row by row of q (contiguous reads), then transpose into [K/pf, N].
    let words_per_row = k_in / pf;
    let mut by_row = vec![0u32; n_out * words_per_row];
    by_row
        .par_chunks_mut(words_per_row)
        .enumerate()
        .for_each(|(n, row_words)| {
            let levels = &ql.q[n * k_in..(n + 1) * k_in];
            for (word, chunk) in row_words.iter_mut().zip(levels.chunks_exact(pf)) {
                *word = chunk
                    .iter()
                    .enumerate()
                    .fold(0u32, |w, (j, &q)| w | ((q as u32 & mask) << (bits * j)));
            }
        });
    let mut qweight = vec![0i32; words_per_row * n_out];
    qweight
        .par_chunks_mut(n_out)
        .enumerate()
        .for_each(|(r, out_row)| {
            for (n, word) in out_row.iter_mut().enumerate() {
                *word = by_row[n * words_per_row + r] as i32;
            }
        });
    let (qzeros, scales, g_idx) = pack_group_params(
        &ql.scheme,
        n_out,
        groups,
        &ql.scales,
        &ql.zeros,
        &ql.g_idx,
        scale_dtype,
    );
    PackedGptq {
        qweight,
        qzeros,
        scales,
        g_idx,
    }
}

/// The group tensors of `pack`: qzeros (zero − 1, packed along N), scales as `scale_dtype`
/// bytes, g_idx as i32. Shared with the GPU path, which packs qweight on the device.
pub fn pack_group_params(
    scheme: &QuantScheme,
    n_out: usize,
    groups: usize,
    scales: &[f32],
    zeros: &[u32],
    g_idx: &[u32],
    scale_dtype: DType,
) -> (Vec<i32>, Vec<u8>, Vec<i32>) {
    let bits = scheme.bits as usize;
    let pf = scheme.pack_factor();
    let mask = scheme.maxq();
    let mut qzeros = vec![0i32; groups * n_out / pf];
    for g in 0..groups {
        for c in 0..n_out / pf {
            let mut w = 0u32;
            for j in 0..pf {
                let z = zeros[g * n_out + c * pf + j];
                w |= (z.wrapping_sub(1) & mask) << (bits * j);
            }
            qzeros[g * (n_out / pf) + c] = w as i32;
        }
    }
    (
        qzeros,
        dtype::from_f32(scale_dtype, scales),
        g_idx.iter().map(|&g| g as i32).collect(),
    )
}

/// Reads GPTQ v1 tensors back into levels and parameters (the inverse of `pack`), checking
/// shapes. Used by the runner, `dequantize` and the round-trip tests.
#[allow(clippy::too_many_arguments)]
pub fn unpack(
    tensor: &str,
    scheme: &QuantScheme,
    qweight: &[i32],
    qzeros: &[i32],
    scales: &[f32],
    g_idx: &[i32],
    out_features: usize,
    in_features: usize,
) -> Result<QuantizedLinear> {
    let bits = scheme.bits as usize;
    let pf = scheme.pack_factor();
    let mask = scheme.maxq();
    let (n_out, k_in) = (out_features, in_features);
    let groups = scales.len() / n_out.max(1);
    let shape_err = |what: &str, got: usize, want: usize| {
        Error::tensor(
            tensor,
            format!("{what} has {got} elements, expected {want}"),
        )
    };
    if qweight.len() != k_in / pf * n_out {
        return Err(shape_err("qweight", qweight.len(), k_in / pf * n_out));
    }
    if scales.len() != groups * n_out || groups == 0 {
        return Err(shape_err("scales", scales.len(), groups.max(1) * n_out));
    }
    if qzeros.len() != groups * n_out / pf {
        return Err(shape_err("qzeros", qzeros.len(), groups * n_out / pf));
    }
    if g_idx.len() != k_in {
        return Err(shape_err("g_idx", g_idx.len(), k_in));
    }
    if let Some(bad) = g_idx.iter().find(|&&g| g < 0 || g as usize >= groups) {
        return Err(Error::tensor(
            tensor,
            format!("g_idx holds {bad}, outside 0..{groups}"),
        ));
    }
    // Parallel over bands of output rows; within a band, each packed row of qweight is read
    // contiguously and its words scattered to `pf` consecutive levels of each output row.
    const BAND: usize = 64;
    let mut q = vec![0u8; n_out * k_in];
    if k_in > 0 {
        q.par_chunks_mut(BAND * k_in)
            .enumerate()
            .for_each(|(band, dst)| {
                let n0 = band * BAND;
                let rows = dst.len() / k_in;
                for r in 0..k_in / pf {
                    let words = &qweight[r * n_out + n0..r * n_out + n0 + rows];
                    for (i, &word) in words.iter().enumerate() {
                        let out = &mut dst[i * k_in + r * pf..i * k_in + (r + 1) * pf];
                        for (j, v) in out.iter_mut().enumerate() {
                            *v = ((word as u32 >> (bits * j)) & mask) as u8;
                        }
                    }
                }
            });
    }
    let mut zeros = vec![0u32; groups * n_out];
    for g in 0..groups {
        for n in 0..n_out {
            let word = qzeros[g * (n_out / pf) + n / pf] as u32;
            // Loaders add the 1 back without masking, so a stored 2^bits-1 reads as 2^bits.
            zeros[g * n_out + n] = ((word >> (bits * (n % pf))) & mask) + 1;
        }
    }
    Ok(QuantizedLinear {
        scheme: *scheme,
        out_features: n_out,
        in_features: k_in,
        q,
        scales: scales.to_vec(),
        zeros,
        g_idx: g_idx.iter().map(|&g| g as u32).collect(),
    })
}

/// `quantization_config` for config.json. Every key vLLM's gptq/gptq_marlin selection reads
/// is present (bits, group_size, sym, desc_act) so it never falls back to a slower kernel.
/// `static_groups` records GPTQ's `--act-order static-groups` (groups fitted before the sweep;
/// loaders do not read it).
pub fn quantization_config(
    scheme: &QuantScheme,
    method: &str,
    damp_percent: f64,
    desc_act: bool,
    static_groups: bool,
) -> Value {
    json!({
        "quant_method": "gptq",
        "bits": scheme.bits,
        "group_size": scheme.group_size_i64(),
        "desc_act": desc_act,
        "sym": scheme.sym,
        "damp_percent": damp_percent,
        "true_sequential": true,
        "static_groups": static_groups,
        "checkpoint_format": "gptq",
        "lm_head": false,
        "meta": {
            "quantizer": [format!("hy-quant:{}", env!("CARGO_PKG_VERSION"))],
            "method": method,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(bits: u8, sym: bool, n: usize, k: usize, gs: i64) -> QuantizedLinear {
        let scheme = QuantScheme::new(bits, gs, sym).unwrap();
        let maxq = scheme.maxq();
        let g = scheme.num_groups(k);
        let glen = scheme.group_len(k);
        QuantizedLinear {
            scheme,
            out_features: n,
            in_features: k,
            q: (0..n * k)
                .map(|i| ((i * 31 + i / 7) as u32 % (maxq + 1)) as u8)
                .collect(),
            scales: (0..g * n).map(|i| 0.01 + i as f32 * 1e-3).collect(),
            zeros: (0..g * n).map(|i| 1 + (i as u32 * 5) % maxq).collect(),
            g_idx: (0..k).map(|i| (i / glen) as u32).collect(),
        }
    }

    #[test]
    fn pack_unpack_round_trip() {
        for (bits, sym) in [(4, true), (4, false), (8, true), (8, false)] {
            let ql = sample(bits, sym, 16, 64, 32);
            let p = pack(&ql, DType::F32);
            let scales = dtype::to_f32(DType::F32, &p.scales);
            let back = unpack(
                "t", &ql.scheme, &p.qweight, &p.qzeros, &scales, &p.g_idx, 16, 64,
            )
            .unwrap();
            assert_eq!(back, ql, "bits={bits} sym={sym}");
        }
    }

    /// Layout facts checked against hand-computed words, not against `unpack`.
    #[test]
    fn four_bit_layout_matches_the_format_description() {
        let scheme = QuantScheme::new(4, -1, true).unwrap();
        let (n, k) = (8, 8);
        // q[n][k] = k for column 0, 0 elsewhere; every zero is 8 (stored 7).
        let mut q = vec![0u8; n * k];
        for (kk, v) in q.iter_mut().enumerate().take(k) {
            *v = kk as u8;
        }
        let ql = QuantizedLinear {
            scheme,
            out_features: n,
            in_features: k,
            q,
            scales: vec![1.0; n],
            zeros: vec![8; n],
            g_idx: vec![0; k],
        };
        let p = pack(&ql, DType::F16);
        // qweight[0][0] holds rows 0..7 of column 0, row k at bits 4k: 0x76543210.
        assert_eq!(p.qweight[0] as u32, 0x7654_3210);
        assert!(p.qweight[1..].iter().all(|&w| w == 0));
        assert_eq!(p.qzeros, vec![0x7777_7777u32 as i32]);
    }

    #[test]
    fn symmetric_8bit_zero_is_stored_as_127() {
        let scheme = QuantScheme::new(8, -1, true).unwrap();
        let ql = QuantizedLinear {
            scheme,
            out_features: 4,
            in_features: 4,
            q: vec![128; 16],
            scales: vec![1.0; 4],
            zeros: vec![128; 4],
            g_idx: vec![0; 4],
        };
        assert_eq!(pack(&ql, DType::F16).qzeros, vec![0x7f7f_7f7f]);
    }

    #[test]
    fn config_has_every_key_vllm_reads() {
        let c = quantization_config(
            &QuantScheme::new(4, 128, true).unwrap(),
            "rtn",
            0.01,
            false,
            false,
        );
        for key in [
            "quant_method",
            "bits",
            "group_size",
            "desc_act",
            "sym",
            "checkpoint_format",
        ] {
            assert!(c.get(key).is_some(), "{key}");
        }
        assert_eq!(c["checkpoint_format"], "gptq");
    }
}
