//! Real-model smoke test (CI runs it through scripts/test.sh, which fetches the model):
//! Qwen2.5-Coder-0.5B-Instruct GGUF -> convert -> RTN int8 -> eval on 20 ddtp en->zh pairs.
//! The original must translate sanely and int8 must barely move the scores.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

fn models_dir() -> PathBuf {
    std::env::var_os("HY_QUANT_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"))
}

#[test]
#[ignore = "needs the real test model: scripts/test.sh fetches it and runs this"]
fn real_qwen_0_5b_convert_rtn8_eval() {
    let gguf = models_dir().join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    assert!(
        gguf.is_file(),
        "{} is missing: run ../shared/scripts/fetch-test-models.sh <dir> 0.5b and set HY_QUANT_TEST_MODELS=<dir>",
        gguf.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let bf16 = tmp.path().join("bf16");
    let int8 = tmp.path().join("int8");
    let out = tmp.path().join("eval");
    ok(&[
        "convert",
        "--from-gguf",
        gguf.to_str().unwrap(),
        "--dtype",
        "bf16",
        "--out",
        bf16.to_str().unwrap(),
    ]);
    ok(&[
        "quantize",
        "--model",
        bf16.to_str().unwrap(),
        "--out",
        int8.to_str().unwrap(),
        "--bits",
        "8",
        "--group-size",
        "128",
    ]);
    assert_eq!(run(&["verify", int8.to_str().unwrap()]).0, 0);
    let testset = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ddtp.en-zh.tsv");
    assert!(
        testset.is_file(),
        "{} is missing (shared/ must sit beside the repo)",
        testset.display()
    );
    let json = ok(&[
        "eval",
        "--original",
        bf16.to_str().unwrap(),
        "--quantized",
        int8.to_str().unwrap(),
        "--testset",
        testset.to_str().unwrap(),
        "--limit",
        "20",
        "--max-new-tokens",
        "64",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    let report: Value = serde_json::from_str(&json).unwrap();
    eprintln!("{}", std::fs::read_to_string(out.join("eval.md")).unwrap());
    let orig = &report["models"][0]["sets"][0];
    let q = &report["models"][1]["sets"][0];
    let bleu = orig["bleu"].as_f64().unwrap();
    assert!(
        (20.0..=80.0).contains(&bleu),
        "original BLEU {bleu} is outside the sane range"
    );
    assert!(orig["chrf"].as_f64().unwrap() > 25.0);
    let d_bleu = q["delta_bleu"]["delta"].as_f64().unwrap();
    let d_chrf = q["delta_chrf"]["delta"].as_f64().unwrap();
    assert!(
        d_bleu.abs() <= 5.0 && d_chrf.abs() <= 4.0,
        "int8 drift too large: ΔBLEU {d_bleu}, ΔchrF {d_chrf}"
    );
    assert!(q["changed_fraction"].as_f64().unwrap() <= 0.5);
    for f in [
        "eval.json",
        "eval.md",
        "hyp/original.ddtp.en-zh.tsv.txt",
        "hyp/int8.ddtp.en-zh.tsv.txt",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
}

/// GPTQ int4 on the real model with a small calibration budget (4 x 256 tokens of the bundled
/// corpus): every linear's output error on the calibration inputs beats RTN's on average and
/// the checkpoint translates. The quality numbers with a larger budget are in docs/quality.md.
#[test]
#[ignore = "needs the real test model: scripts/test.sh fetches it and runs this"]
fn real_qwen_0_5b_gptq4_beats_rtn_on_calibration_outputs() {
    let gguf = models_dir().join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    assert!(gguf.is_file(), "{} is missing", gguf.display());
    let tmp = tempfile::tempdir().unwrap();
    let bf16 = tmp.path().join("bf16");
    let q = tmp.path().join("gptq4");
    ok(&[
        "convert",
        "--from-gguf",
        gguf.to_str().unwrap(),
        "--out",
        bf16.to_str().unwrap(),
    ]);
    ok(&[
        "quantize",
        "--model",
        bf16.to_str().unwrap(),
        "--out",
        q.to_str().unwrap(),
        "--method",
        "gptq",
        "--bits",
        "4",
        "--group-size",
        "128",
        "--calib-samples",
        "4",
        "--calib-seqlen",
        "256",
    ]);
    let m: Value =
        serde_json::from_slice(&std::fs::read(q.join("manifest.json")).unwrap()).unwrap();
    let tensors = m["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 168);
    let ratios: Vec<f64> = tensors
        .iter()
        .map(|t| {
            let c = &t["calibrated"];
            c["output_rel_error"].as_f64().unwrap() / c["rtn_output_rel_error"].as_f64().unwrap()
        })
        .collect();
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    assert!(
        mean < 0.8,
        "GPTQ/RTN output error ratio {mean:.3} (expected clearly below 1)"
    );
    assert!(ratios.iter().all(|r| *r < 1.05), "{ratios:?}");
    assert_eq!(run(&["verify", q.to_str().unwrap()]).0, 0);
    let out = ok(&[
        "translate",
        "--model",
        q.to_str().unwrap(),
        "--from",
        "en",
        "--to",
        "zh",
        "--max-new-tokens",
        "24",
        "The package provides a command-line tool.",
    ]);
    assert!(
        out.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)),
        "GPTQ int4 model did not answer in Chinese: {out:?}"
    );
}
