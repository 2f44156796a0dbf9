//! End-to-end: synthesize or build small checkpoints, quantize them with the binary, and read
//! the result back with the `safetensors` crate and a dequantizer written here from the format
//! description (../shared/formats.md), not with hy-quant's own unpacker.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// GPTQ v1 dequantization straight from the format description.
fn dequant_v1(
    qweight: &[i32],
    qzeros: &[i32],
    scales: &[f32],
    g_idx: &[i32],
    bits: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let pf = 32 / bits;
    let mask = (1u32 << bits) - 1;
    let mut w = vec![0f32; n * k];
    for row in 0..n {
        for col in 0..k {
            let q = (qweight[(col / pf) * n + row] as u32 >> (bits * (col % pf))) & mask;
            let g = g_idx[col] as usize;
            let z = ((qzeros[g * (n / pf) + row / pf] as u32 >> (bits * (row % pf))) & mask) + 1;
            w[row * k + col] = scales[g * n + row] * (q as f32 - z as f32);
        }
    }
    w
}

fn config(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap()
}

#[test]
fn every_scheme_writes_gptq_v1_that_dequantizes_to_the_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_tiny(tmp.path(), "tiny", 7);
    let input = read_st(&model.join("model.safetensors"));
    for bits in [4usize, 8] {
        for gs in [32i64, 64, 128, -1] {
            for sym in [true, false] {
                let out = tmp.path().join(format!("q{bits}-{gs}-{sym}"));
                let mut args = vec![
                    "quantize".to_string(),
                    "--model".into(),
                    model.to_str().unwrap().into(),
                    "--out".into(),
                    out.to_str().unwrap().into(),
                    "--bits".into(),
                    bits.to_string(),
                    "--group-size".into(),
                    gs.to_string(),
                ];
                if !sym {
                    args.push("--asym".into());
                }
                ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
                let qc = &config(&out)["quantization_config"];
                assert_eq!(qc["quant_method"], "gptq");
                assert_eq!(qc["bits"], bits);
                assert_eq!(qc["group_size"], gs);
                assert_eq!(qc["sym"], sym);
                assert_eq!(qc["desc_act"], false);
                assert_eq!(qc["checkpoint_format"], "gptq");
                let output = read_st(&out.join("model.safetensors"));
                for (name, (dtype, shape, data)) in &input {
                    let Some(prefix) = name.strip_suffix(".weight").filter(|p| p.contains("_proj"))
                    else {
                        // Norms and embeddings are carried over byte for byte.
                        assert_eq!(&output[name].2, data, "{name} changed");
                        assert_eq!(output[name].0, *dtype);
                        continue;
                    };
                    assert!(!output.contains_key(name), "{name} should be replaced");
                    let (n, k) = (shape[0], shape[1]);
                    let g = if gs == -1 { 1 } else { k.div_ceil(gs as usize) };
                    let get = |s: &str| &output[&format!("{prefix}.{s}")];
                    assert_eq!(get("qweight").1, vec![k * bits / 32, n], "{prefix}");
                    assert_eq!(get("qzeros").1, vec![g, n * bits / 32], "{prefix}");
                    assert_eq!(get("scales").1, vec![g, n], "{prefix}");
                    assert_eq!(get("scales").0, safetensors::Dtype::BF16);
                    assert_eq!(get("g_idx").1, vec![k], "{prefix}");
                    let g_idx = i32s(&get("g_idx").2);
                    let glen = if gs == -1 { k } else { gs as usize };
                    assert!(g_idx
                        .iter()
                        .enumerate()
                        .all(|(i, &v)| v as usize == i / glen));
                    let qzeros = i32s(&get("qzeros").2);
                    if sym {
                        let word = if bits == 4 {
                            0x7777_7777u32
                        } else {
                            0x7f7f_7f7f
                        };
                        assert!(
                            qzeros.iter().all(|&z| z as u32 == word),
                            "{prefix}: sym zeros"
                        );
                    }
                    let scales = bf16s(&get("scales").2);
                    let w = dequant_v1(
                        &i32s(&get("qweight").2),
                        &qzeros,
                        &scales,
                        &g_idx,
                        bits,
                        n,
                        k,
                    );
                    let orig = bf16s(data);
                    for i in 0..n * k {
                        let step = scales[g_idx[i % k] as usize * n + i / k];
                        let err = (w[i] - orig[i]).abs();
                        // Half a step, plus what the bf16 rounding of the scale (relative
                        // error <= 2^-9) can add at the clamped end of the grid.
                        assert!(
                            err <= step * 0.5001 + orig[i].abs() / 256.0,
                            "{prefix}[{i}] bits={bits} gs={gs} sym={sym}: {} vs {}",
                            w[i],
                            orig[i]
                        );
                    }
                }
                let (code, _, err) = run(&["verify", out.to_str().unwrap()]);
                assert_eq!(code, 0, "{err}");
            }
        }
    }
}

#[test]
fn same_command_twice_gives_byte_identical_files() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_tiny(tmp.path(), "tiny", 3);
    let mut runs = Vec::new();
    for name in ["a", "b"] {
        let out = tmp.path().join(name);
        ok(&[
            "quantize",
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--bits",
            "4",
        ]);
        let mut files = dir_files(&out);
        let manifest: Value =
            serde_json::from_slice(&files.remove("manifest.json").unwrap()).unwrap();
        runs.push((files, manifest));
    }
    assert_eq!(runs[0].0, runs[1].0);
    assert_eq!(runs[0].1["outputs"], runs[1].1["outputs"]);
    assert_eq!(runs[0].1["tensors"], runs[1].1["tensors"]);
}

#[test]
fn qwen2_biases_and_llama_lm_head_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    for mt in ["qwen2", "llama"] {
        let (cfg, tensors) = tiny_llama_like(mt);
        let dir = tmp.path().join(mt);
        write_checkpoint(&dir, &cfg, tensors, 1);
        let out = tmp.path().join(format!("{mt}-q"));
        ok(&[
            "quantize",
            "--model",
            dir.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--bits",
            "8",
            "--group-size",
            "32",
        ]);
        let input = read_st(&dir.join("model.safetensors"));
        let output = read_st(&out.join("model.safetensors"));
        let bias = "model.layers.1.self_attn.k_proj.bias";
        assert_eq!(output.contains_key(bias), mt == "qwen2");
        if mt == "qwen2" {
            assert_eq!(output[bias].2, input[bias].2);
            assert!(
                !output.contains_key("lm_head.weight"),
                "tied model must not gain an lm_head"
            );
        } else {
            assert_eq!(output["lm_head.weight"].2, input["lm_head.weight"].2);
        }
        assert!(output.contains_key("model.layers.1.mlp.down_proj.qweight"));
    }
}

#[test]
fn sharded_input_gives_sharded_output_with_an_index() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, tensors) = tiny_llama_like("llama");
    let dir = tmp.path().join("sharded");
    write_checkpoint(&dir, &cfg, tensors, 3);
    let out = tmp.path().join("q");
    ok(&[
        "quantize",
        "--model",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--bits",
        "4",
        "--group-size",
        "32",
        "--max-shard-size",
        "40KB",
    ]);
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let map = index["weight_map"].as_object().unwrap();
    let files: std::collections::BTreeSet<&str> =
        map.values().map(|v| v.as_str().unwrap()).collect();
    assert!(files.len() >= 2, "expected several shards, got {files:?}");
    let mut seen = 0;
    for f in &files {
        assert!(
            f.starts_with("model-000") && f.contains(&format!("-of-{:05}", files.len())),
            "{f}"
        );
        let st = read_st(&out.join(f));
        assert!(st.values().map(|t| t.2.len()).sum::<usize>() <= 40_000 || st.len() == 1);
        for name in st.keys() {
            assert_eq!(map[name].as_str().unwrap(), *f);
            seen += 1;
        }
    }
    assert_eq!(seen, map.len());
    assert_eq!(run(&["verify", out.to_str().unwrap()]).0, 0);
}

#[test]
fn previous_output_is_replaced_but_a_foreign_directory_needs_force() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_tiny(tmp.path(), "tiny", 1);
    let out = tmp.path().join("out");
    let m = model.to_str().unwrap();
    let o = out.to_str().unwrap();
    ok(&["quantize", "--model", m, "--out", o, "--bits", "8"]);
    ok(&["quantize", "--model", m, "--out", o, "--bits", "4"]);
    assert_eq!(config(&out)["quantization_config"]["bits"], 4);

    let foreign = tmp.path().join("photos");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("cat.jpg"), b"precious").unwrap();
    let (code, _, err) = run(&["quantize", "--model", m, "--out", foreign.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("photos") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(foreign.join("cat.jpg")).unwrap(), b"precious");
    ok(&[
        "quantize",
        "--model",
        m,
        "--out",
        foreign.to_str().unwrap(),
        "--force",
    ]);
    assert!(!foreign.join("cat.jpg").exists());
    assert!(foreign.join("manifest.json").exists());

    let (code, _, err) = run(&["quantize", "--model", m, "--out", m]);
    assert_ne!(
        code, 0,
        "quantizing into the input directory must be refused"
    );
    assert!(err.contains("input model directory"), "{err}");
    assert!(model.join("model.safetensors").exists());
}

#[test]
fn verify_reports_a_changed_byte_and_an_extra_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_tiny(tmp.path(), "tiny", 2);
    let out = tmp.path().join("q");
    ok(&[
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let st = out.join("model.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&st, bytes).unwrap();
    std::fs::write(out.join("stray.bin"), b"x").unwrap();
    let (code, stdout, _) = run(&["verify", out.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stdout.contains("model.safetensors: sha256"), "{stdout}");
    assert!(stdout.contains("stray.bin"), "{stdout}");
}

#[test]
fn manifest_records_inputs_outputs_stats_and_phases() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_tiny(tmp.path(), "tiny", 4);
    let out = tmp.path().join("q");
    let json = ok(&[
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    let summary: Value = serde_json::from_str(&json).expect("--json prints JSON on stdout");
    assert_eq!(summary["linears"], 14);
    let m: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["tool"], "hy-quant");
    assert!(m["command"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "quantize"));
    let inputs = m["inputs"].as_array().unwrap();
    assert!(inputs
        .iter()
        .any(|f| f["path"] == "model.safetensors" && f["sha256"].as_str().unwrap().len() == 64));
    let tensors = m["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 14);
    for t in tensors {
        let e = t["rel_fro"].as_f64().unwrap();
        assert!(e > 0.0 && e < 0.3, "{t}");
        assert!(t["max_abs"].as_f64().unwrap() > 0.0);
    }
    assert!(!m["phases"].as_array().unwrap().is_empty());
    let inspect = ok(&["inspect", out.to_str().unwrap()]);
    assert!(
        inspect.contains("hunyuan_v1_dense") && inspect.contains("bits=4"),
        "{inspect}"
    );
}

#[test]
fn hub_id_resolves_offline_from_a_cache_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_tiny(tmp.path(), "tiny", 5);
    let cache = tmp.path().join("hub");
    let repo = cache.join("models--tencent--HY-MT-tiny");
    let sha = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), sha).unwrap();
    let snap = repo.join("snapshots").join(sha);
    std::fs::create_dir_all(&snap).unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(model.join(f), snap.join(f)).unwrap();
    }
    let cache_s = cache.to_str().unwrap();
    let out = tmp.path().join("q");
    let env = [("HF_HUB_CACHE", cache_s), ("HF_HUB_OFFLINE", "1")];
    let (code, _, err) = run_env(
        &[
            "quantize",
            "--model",
            "tencent/HY-MT-tiny",
            "--out",
            out.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.join("model.safetensors").exists());
    let (code, _, err) = run_env(
        &[
            "quantize",
            "--model",
            "tencent/absent",
            "--out",
            out.to_str().unwrap(),
        ],
        &env,
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("tencent/absent") && err.contains("cache"),
        "{err}"
    );
}

#[test]
fn dequantize_writes_exactly_what_the_format_decodes_to() {
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_tiny(tmp.path(), "tiny", 9);
    let q = tmp.path().join("q");
    let d = tmp.path().join("d");
    ok(&[
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--out",
        q.to_str().unwrap(),
        "--bits",
        "4",
        "--group-size",
        "32",
        "--asym",
    ]);
    ok(&[
        "dequantize",
        "--model",
        q.to_str().unwrap(),
        "--out",
        d.to_str().unwrap(),
    ]);
    let qt = read_st(&q.join("model.safetensors"));
    let dt = read_st(&d.join("model.safetensors"));
    let prefix = "model.layers.1.mlp.down_proj";
    let (n, k) = (128, 384);
    let w = dequant_v1(
        &i32s(&qt[&format!("{prefix}.qweight")].2),
        &i32s(&qt[&format!("{prefix}.qzeros")].2),
        &bf16s(&qt[&format!("{prefix}.scales")].2),
        &i32s(&qt[&format!("{prefix}.g_idx")].2),
        4,
        n,
        k,
    );
    let ours = bf16s(&dt[&format!("{prefix}.weight")].2);
    assert_eq!(dt[&format!("{prefix}.weight")].1, vec![n, k]);
    for (a, b) in w.iter().zip(&ours) {
        assert_eq!(half::bf16::from_f32(*a).to_f32(), *b);
    }
    assert!(config(&d).get("quantization_config").is_none());
}

#[test]
fn eval_refuses_a_quantized_model_of_another_base() {
    let tmp = tempfile::tempdir().unwrap();
    let hunyuan = synth_tiny(tmp.path(), "tiny", 1);
    let (cfg, tensors) = tiny_llama_like("qwen2");
    let qwen = tmp.path().join("qwen");
    write_checkpoint(&qwen, &cfg, tensors, 1);
    let qwen_q = tmp.path().join("qwen-q");
    ok(&[
        "quantize",
        "--model",
        qwen.to_str().unwrap(),
        "--out",
        qwen_q.to_str().unwrap(),
        "--bits",
        "8",
        "--group-size",
        "32",
    ]);
    let tsv = tmp.path().join("t.en-zh.tsv");
    std::fs::write(&tsv, "hello\t你好\n").unwrap();
    let (code, _, err) = run(&[
        "eval",
        "--original",
        hunyuan.to_str().unwrap(),
        "--quantized",
        qwen_q.to_str().unwrap(),
        "--testset",
        tsv.to_str().unwrap(),
        "--out",
        tmp.path().join("e").to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("qwen-q")
            && err.contains("model_type")
            && err.contains("not a quantization of it"),
        "{err}"
    );
    let bad_tsv = tmp.path().join("bad.en-zh.tsv");
    std::fs::write(&bad_tsv, "a\tb\nonly one column\n").unwrap();
    let (code, _, err) = run(&[
        "eval",
        "--original",
        hunyuan.to_str().unwrap(),
        "--quantized",
        qwen_q.to_str().unwrap(),
        "--testset",
        bad_tsv.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("bad.en-zh.tsv") && err.contains("line 2"),
        "{err}"
    );
}

#[test]
fn f16_and_f32_inputs_get_half_precision_scales() {
    let tmp = tempfile::tempdir().unwrap();
    for (dtype, scale_dtype) in [
        ("f16", safetensors::Dtype::F16),
        ("f32", safetensors::Dtype::F16),
    ] {
        let model = tmp.path().join(format!("tiny-{dtype}"));
        ok(&[
            "synth",
            "--preset",
            "tiny",
            "--dtype",
            dtype,
            "--out",
            model.to_str().unwrap(),
        ]);
        let out = tmp.path().join(format!("q-{dtype}"));
        ok(&[
            "quantize",
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--bits",
            "4",
            "--group-size",
            "64",
        ]);
        let input = read_st(&model.join("model.safetensors"));
        let output = read_st(&out.join("model.safetensors"));
        assert_eq!(
            output["model.layers.0.mlp.up_proj.scales"].0, scale_dtype,
            "{dtype}"
        );
        // Unquantized tensors keep their dtype and bytes.
        assert_eq!(
            output["model.norm.weight"], input["model.norm.weight"],
            "{dtype}"
        );
        assert_eq!(run(&["verify", out.to_str().unwrap()]).0, 0);
    }
}
