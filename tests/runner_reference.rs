//! The runner against an independent numpy float64 forward pass (scripts/runner_reference.py,
//! which wrote tests/data/runner_reference_tiny.json) on the `synth --preset tiny` HunYuan
//! checkpoint, full precision and GPTQ v1 int4/int8. Regenerate the data with
//! `python3 scripts/runner_reference.py --regenerate-test-data`.

use std::path::Path;

use hy_quant::dtype::DType;
use hy_quant::model::synth::{synth, Preset, SynthOptions};
use hy_quant::model::Checkpoint;
use hy_quant::progress::Silent;
use hy_quant::quant::pipeline::{quantize, Method, QuantizeOptions};
use hy_quant::quant::QuantScheme;
use hy_quant::runner::{Model, SeqStep};
use serde_json::Value;

fn rel_error(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
    diff / scale
}

fn last_logits(dir: &Path, tokens: &[u32], chunks: &[usize]) -> Vec<f32> {
    let ckpt = Checkpoint::open(dir).unwrap();
    let model = Model::load(&ckpt).unwrap();
    let mut cache = model.new_cache();
    let mut at = 0;
    let mut logits = Vec::new();
    for &n in chunks {
        let mut steps = [SeqStep {
            tokens: &tokens[at..at + n],
            cache: &mut cache,
        }];
        logits = model.forward(&mut steps).unwrap().remove(0);
        at += n;
    }
    assert_eq!(at, tokens.len());
    logits
}

#[test]
fn tiny_hunyuan_matches_numpy_reference() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/runner_reference_tiny.json"
    ))
    .unwrap();
    let data: Value = serde_json::from_str(&text).unwrap();
    let tokens: Vec<u32> = data["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let fp = tmp.path().join("tiny");
    synth(
        &SynthOptions {
            preset: Preset::Tiny,
            dtype: DType::BF16,
            seed: data["seed"].as_u64().unwrap(),
            out: fp.clone(),
            force: false,
        },
        &Silent,
    )
    .unwrap();
    for case in data["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let dir = match case["quantize"].as_object() {
            None => fp.clone(),
            Some(q) => {
                let out = tmp.path().join(name);
                quantize(
                    &QuantizeOptions {
                        model: fp.clone(),
                        out: out.clone(),
                        method: Method::parse(q["method"].as_str().unwrap()).unwrap(),
                        scheme: QuantScheme::new(
                            q["bits"].as_u64().unwrap() as u8,
                            q["group_size"].as_i64().unwrap(),
                            true,
                        )
                        .unwrap(),
                        force: false,
                        max_shard_bytes: 5_000_000_000,
                        command: vec!["test".into()],
                        gptq: None,
                    },
                    &Silent,
                )
                .unwrap();
                out
            }
        };
        let want: Vec<f64> = case["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        // One prefill, and the same tokens fed through the KV cache in pieces.
        for chunks in [vec![tokens.len()], vec![5, 1, 1, 4, 1]] {
            let got = last_logits(&dir, &tokens, &chunks);
            assert_eq!(got.len(), want.len());
            let err = rel_error(&got, &want);
            eprintln!("{name} chunks {chunks:?}: rel. error {err:.2e}");
            assert!(
                err < 1e-4,
                "{name} chunks {chunks:?}: rel. error {err:.3e} vs numpy reference"
            );
        }
    }
}
