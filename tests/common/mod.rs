//! Shared helpers for integration tests: run the binary, build small checkpoints with the
//! `safetensors` crate (an independent writer, so our reader is not tested against itself).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use half::bf16;
use serde_json::{json, Map, Value};

use hy_quant::dtype::DType;
use hy_quant::model::synth::{synth, Preset, SynthOptions};
use hy_quant::progress::Silent;
use hy_quant::runner::prompt::{HY_ASSISTANT, HY_BOS, HY_USER};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hy-quant"))
}

/// Runs the binary; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    run_env(args, &[])
}

pub fn run_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = bin();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("binary runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

pub fn ok(args: &[&str]) -> String {
    let (code, out, err) = run(args);
    assert_eq!(code, 0, "hy-quant {args:?} failed:\n{err}");
    out
}

/// Synthesizes the tiny HunYuan preset into `dir/name`.
pub fn synth_tiny(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let out = dir.join(name);
    ok(&[
        "synth",
        "--preset",
        "tiny",
        "--seed",
        &seed.to_string(),
        "--out",
        out.to_str().unwrap(),
    ]);
    out
}

/// A tensor to write: name, safetensors dtype, shape, raw bytes.
pub struct RawTensor {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

pub fn bf16_tensor(name: &str, shape: &[usize], f: impl Fn(usize) -> f32) -> RawTensor {
    let n: usize = shape.iter().product();
    RawTensor {
        name: name.into(),
        dtype: safetensors::Dtype::BF16,
        shape: shape.to_vec(),
        data: (0..n)
            .flat_map(|i| bf16::from_f32(f(i)).to_le_bytes())
            .collect(),
    }
}

/// Writes tensors into `files` safetensors files (round-robin by sorted name) plus an index
/// when more than one.
pub fn write_checkpoint(dir: &Path, config: &Value, tensors: Vec<RawTensor>, files: usize) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(config).unwrap(),
    )
    .unwrap();
    let mut by_file: Vec<Vec<RawTensor>> = (0..files).map(|_| Vec::new()).collect();
    let mut tensors = tensors;
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    for (i, t) in tensors.into_iter().enumerate() {
        by_file[i % files].push(t);
    }
    let mut weight_map = BTreeMap::new();
    for (i, group) in by_file.iter().enumerate() {
        let fname = if files == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, files)
        };
        let views: Vec<(String, safetensors::tensor::TensorView)> = group
            .iter()
            .map(|t| {
                weight_map.insert(t.name.clone(), fname.clone());
                (
                    t.name.clone(),
                    safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)
                        .unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(&fname)).unwrap();
    }
    if files > 1 {
        let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            serde_json::to_vec_pretty(&index).unwrap(),
        )
        .unwrap();
    }
}

/// The seven linears of a Llama-style decoder layer (name under `model.layers.{l}`, [out, in]).
pub fn decoder_linear_shapes(
    h: usize,
    inter: usize,
    heads: usize,
    kv: usize,
    hd: usize,
) -> [(&'static str, [usize; 2]); 7] {
    [
        ("self_attn.q_proj", [heads * hd, h]),
        ("self_attn.k_proj", [kv * hd, h]),
        ("self_attn.v_proj", [kv * hd, h]),
        ("self_attn.o_proj", [h, heads * hd]),
        ("mlp.gate_proj", [inter, h]),
        ("mlp.up_proj", [inter, h]),
        ("mlp.down_proj", [h, inter]),
    ]
}

/// A tiny Qwen2 (q/k/v bias) or Llama config + weights.
pub fn tiny_llama_like(model_type: &str) -> (Value, Vec<RawTensor>) {
    let (h, inter, heads, kv, layers, vocab) =
        (64usize, 128usize, 4usize, 2usize, 2usize, 256usize);
    let hd = h / heads;
    let arch = if model_type == "qwen2" {
        "Qwen2ForCausalLM"
    } else {
        "LlamaForCausalLM"
    };
    let config = json!({
        "architectures": [arch], "model_type": model_type, "hidden_size": h,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "vocab_size": vocab, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "tie_word_embeddings": model_type == "qwen2",
        "torch_dtype": "bfloat16"
    });
    let w = |i: usize| ((i * 2654435761usize) % 1000) as f32 / 1000.0 * 0.1 - 0.05;
    let mut t = vec![bf16_tensor("model.embed_tokens.weight", &[vocab, h], w)];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in decoder_linear_shapes(h, inter, heads, kv, hd) {
            t.push(bf16_tensor(&format!("{p}.{name}.weight"), &shape, w));
            if model_type == "qwen2"
                && ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"].contains(&name)
            {
                t.push(bf16_tensor(&format!("{p}.{name}.bias"), &[shape[0]], |i| {
                    i as f32 * 0.01
                }));
            }
        }
        t.push(bf16_tensor(
            &format!("{p}.input_layernorm.weight"),
            &[h],
            |_| 1.0,
        ));
        t.push(bf16_tensor(
            &format!("{p}.post_attention_layernorm.weight"),
            &[h],
            |_| 1.0,
        ));
    }
    t.push(bf16_tensor("model.norm.weight", &[h], |_| 1.0));
    if model_type != "qwen2" {
        t.push(bf16_tensor("lm_head.weight", &[vocab, h], w));
    }
    (config, t)
}

/// Loads a safetensors file with the `safetensors` crate: name -> (dtype, shape, bytes).
pub fn read_st(path: &Path) -> BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

/// Every file of a directory with its bytes, by name.
pub fn dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

pub fn i32s(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub fn bf16s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

/// A word-level tokenizer for the tiny HunYuan preset: the HunYuan chat specials (ids 0-4),
/// then `w5` .. `w1023` (id 1000 is spelled `</s>`, an ordinary entry).
pub const HY_EOS: &str = "<｜hy_place▁holder▁no▁2｜>";

pub fn write_tokenizer(dir: &std::path::Path) {
    let specials = ["<unk>", HY_BOS, HY_USER, HY_ASSISTANT, HY_EOS];
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (i, s) in specials.iter().enumerate() {
        vocab.insert(s.to_string(), json!(i));
        added.push(
            json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                          "normalized": false, "special": true}),
        );
    }
    for i in specials.len()..1024 {
        // An ordinary entry spelled like a stop token must not stop generation.
        let word = if i == 1000 {
            "</s>".to_string()
        } else {
            format!("w{i}")
        };
        vocab.insert(word, json!(i));
    }
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": false},
        "model": {"type": "WordLevel", "vocab": Value::Object(vocab), "unk_token": "<unk>"}
    });
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_vec(&tok).unwrap(),
    )
    .unwrap();
}

/// The tiny synthetic HunYuan checkpoint plus the word-level tokenizer above.
pub fn tiny_with_tokenizer(root: &std::path::Path) -> std::path::PathBuf {
    let dir = root.join("tiny");
    synth(
        &SynthOptions {
            preset: Preset::Tiny,
            dtype: DType::BF16,
            seed: 1,
            out: dir.clone(),
            force: false,
        },
        &Silent,
    )
    .unwrap();
    write_tokenizer(&dir);
    dir
}
