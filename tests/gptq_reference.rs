//! GPTQ solver against the PyTorch reference `scripts/gptq_reference.py`.
//!
//! `tests/data/gptq_ref/` holds a bf16 weight [64, 256] and 512 calibration rows (a few dominant
//! directions, outlier channels, one dead input) and the reference's levels, grids and g_idx
//! for thirteen configs (five with the clip search, among them the defaults: static groups +
//! clip search, int4 g128 sym); regenerate with
//! `/work/pyenv/bin/python scripts/gptq_reference.py make-test-data`.
//! Both sides use the same grid, damping, block size and act order; they differ only in
//! floating-point summation order (and the reference's three-step inverse factor), so the
//! per-layer output error must agree closely and most levels must be identical.

use std::path::Path;

use half::bf16;
use hy_quant::dtype::DType;
use hy_quant::quant::gptq::{gptq_quantize, output_error, ActOrder, GptqConfig, Hessian};
use hy_quant::quant::grid::GridFit;
use hy_quant::quant::rtn::Rtn;
use hy_quant::quant::{QuantMethod, QuantScheme, QuantizedLinear, Weight};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gptq_ref");

fn read(path: &str) -> Vec<u8> {
    std::fs::read(Path::new(DIR).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn f32s(st: &SafeTensors<'_>, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = st.tensor(name).unwrap();
    let v = match t.dtype() {
        Dtype::BF16 => t
            .data()
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        d => panic!("{name}: unexpected {d:?}"),
    };
    (v, t.shape().to_vec())
}

fn i32s(st: &SafeTensors<'_>, name: &str) -> Vec<u32> {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::I32, "{name}");
    t.data()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect()
}

#[test]
fn agrees_with_the_pytorch_reference() {
    let inputs = read("inputs.safetensors");
    let inputs = SafeTensors::deserialize(&inputs).unwrap();
    let (w, wshape) = f32s(&inputs, "weight");
    let (x, xshape) = f32s(&inputs, "x");
    let (n, k, rows) = (wshape[0], wshape[1], xshape[0]);
    assert_eq!(xshape[1], k);

    // Accumulate in uneven batches to exercise the running average.
    let mut h = Hessian::new(k);
    let mut r0 = 0;
    for m in [100, 1, 300, rows - 401] {
        h.add_batch(&x[r0 * k..(r0 + m) * k], m);
        r0 += m;
    }

    let outputs = read("outputs.safetensors");
    let outputs = SafeTensors::deserialize(&outputs).unwrap();
    let meta: Value = serde_json::from_slice(&read("meta.json")).unwrap();
    let weight = Weight {
        name: "gptq_ref.weight",
        data: &w,
        out_features: n,
        in_features: k,
        scale_dtype: DType::BF16,
    };
    let mut min_agree: f64 = 1.0;
    for c in meta["configs"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let scheme = QuantScheme::new(
            c["bits"].as_u64().unwrap() as u8,
            c["group_size"].as_i64().unwrap(),
            c["sym"].as_bool().unwrap(),
        )
        .unwrap();
        let act_order = match c["act_order"].as_str().unwrap() {
            "none" => ActOrder::None,
            "permute" => ActOrder::Permute,
            "static" => ActOrder::StaticGroups,
            a => panic!("{a}"),
        };
        let grid_fit = if c["clip_search"].as_bool().unwrap() {
            GridFit::ClipSearch
        } else {
            GridFit::MinMax
        };
        let cfg = GptqConfig {
            damp: c["damp"].as_f64().unwrap(),
            block_size: c["block_size"].as_u64().unwrap() as usize,
            act_order,
            grid_fit,
            ..GptqConfig::new(scheme)
        };
        let out = gptq_quantize(&weight, &h, &cfg).unwrap();
        assert_eq!(out.damp_used, c["damp_used"].as_f64().unwrap(), "{name}");

        let t = outputs.tensor(&format!("{name}.q")).unwrap();
        let reference = QuantizedLinear {
            scheme,
            out_features: n,
            in_features: k,
            q: t.data().to_vec(),
            scales: f32s(&outputs, &format!("{name}.scales")).0,
            zeros: i32s(&outputs, &format!("{name}.zeros")),
            g_idx: i32s(&outputs, &format!("{name}.g_idx")),
        };
        assert_eq!(out.linear.g_idx, reference.g_idx, "{name}: g_idx");

        let ours = output_error(&w, &out.linear.dequantize(), &h);
        let theirs = output_error(&w, &reference.dequantize(), &h);
        let stored = c["output_error"].as_f64().unwrap();
        let rtn = output_error(
            &w,
            &Rtn { scheme }.quantize(&weight).unwrap().dequantize(),
            &h,
        );
        let same = out
            .linear
            .q
            .iter()
            .zip(&reference.q)
            .filter(|(a, b)| a == b)
            .count() as f64
            / (n * k) as f64;
        let same_grid = out
            .linear
            .scales
            .iter()
            .zip(&reference.scales)
            .filter(|(a, b)| a == b)
            .count() as f64
            / reference.scales.len() as f64;
        println!(
            "{name}: output error ours {ours:.4e} reference {theirs:.4e} (ratio {:.4}), \
             rtn {rtn:.4e} (gptq/rtn {:.3}); identical levels {:.2}%, scales {:.2}%; \
             loss ours {:.4} reference {:.4}",
            ours / theirs,
            ours / rtn,
            100.0 * same,
            100.0 * same_grid,
            out.loss,
            c["loss"].as_f64().unwrap(),
        );
        // Our dequantization of the reference's levels reproduces its own error.
        assert!(
            (theirs - stored).abs() < 1e-3 * stored,
            "{name}: {theirs} vs {stored}"
        );
        assert!(
            (ours / theirs - 1.0).abs() < 0.02,
            "{name}: {ours} vs {theirs}"
        );
        assert!(
            same > 0.9,
            "{name}: only {:.2}% identical levels",
            100.0 * same
        );
        assert!(ours < 0.7 * rtn, "{name}: gptq {ours} rtn {rtn}");
        min_agree = min_agree.min(same);
    }
    println!(
        "lowest fraction of identical levels: {:.2}%",
        100.0 * min_agree
    );
}
