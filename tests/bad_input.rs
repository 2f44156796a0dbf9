//! Bad input never panics, always names the file/tensor at fault, exits non-zero, and never
//! leaves an output directory behind (complete-looking or partial).

mod common;

use std::path::{Path, PathBuf};

use common::*;

struct Case {
    _tmp: tempfile::TempDir,
    model: PathBuf,
    out: PathBuf,
}

fn case() -> Case {
    let tmp = tempfile::tempdir().unwrap();
    let model = synth_tiny(tmp.path(), "model", 11);
    let out = tmp.path().join("out");
    Case {
        _tmp: tmp,
        model,
        out,
    }
}

/// Runs quantize, expects failure with every `needles` in stderr and no output left.
fn fails(c: &Case, extra: &[&str], needles: &[&str]) -> String {
    let mut args = vec![
        "quantize",
        "--model",
        c.model.to_str().unwrap(),
        "--out",
        c.out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (code, _, err) = run(&args);
    assert_eq!(code, 2, "expected a clean error exit, got {code}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
    assert!(!c.out.exists(), "output directory left behind");
    let partial = PathBuf::from(format!("{}.hyq-partial", c.out.display()));
    assert!(!partial.exists(), "partial directory left behind");
    err
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, serde_json::to_vec(&v).unwrap()).unwrap();
}

/// Rewrites the model's safetensors file with `edit` applied to its tensors.
fn edit_tensors(dir: &Path, edit: impl FnOnce(&mut Vec<RawTensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors: Vec<RawTensor> = read_st(&path)
        .into_iter()
        .map(|(name, (dtype, shape, data))| RawTensor {
            name,
            dtype,
            shape,
            data,
        })
        .collect();
    edit(&mut tensors);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    std::fs::remove_file(&path).unwrap();
    write_checkpoint(dir, &cfg, tensors, 1);
}

#[test]
fn missing_config() {
    let c = case();
    std::fs::remove_file(c.model.join("config.json")).unwrap();
    fails(&c, &[], &["config.json", "not found"]);
}

#[test]
fn missing_model_directory() {
    let c = case();
    std::fs::remove_dir_all(&c.model).unwrap();
    fails(&c, &[], &["model"]);
}

#[test]
fn unknown_architecture_lists_the_supported_ones() {
    let c = case();
    edit_config(&c.model, |v| v["model_type"] = "mamba".into());
    fails(
        &c,
        &[],
        &["\"mamba\"", "hunyuan_v1_dense", "llama", "qwen2"],
    );
}

#[test]
fn truncated_shard() {
    let c = case();
    let p = c.model.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 1000]).unwrap();
    fails(&c, &[], &["model.safetensors", "truncated"]);
}

#[test]
fn corrupt_header() {
    let c = case();
    let p = c.model.join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[8..16].copy_from_slice(b"{{garbag");
    std::fs::write(&p, &bytes).unwrap();
    fails(&c, &[], &["model.safetensors", "header"]);
    std::fs::write(&p, [0xffu8; 16]).unwrap();
    fails(&c, &[], &["model.safetensors", "header length"]);
}

#[test]
fn missing_tensor() {
    let c = case();
    edit_tensors(&c.model, |t| {
        t.retain(|t| t.name != "model.layers.1.mlp.up_proj.weight")
    });
    fails(&c, &[], &["model.layers.1.mlp.up_proj.weight", "missing"]);
}

#[test]
fn wrong_shape() {
    let c = case();
    edit_tensors(&c.model, |t| {
        let x = t
            .iter_mut()
            .find(|t| t.name == "model.layers.0.self_attn.k_proj.weight")
            .unwrap();
        x.shape = vec![x.shape[1], x.shape[0]];
    });
    fails(
        &c,
        &[],
        &["model.layers.0.self_attn.k_proj.weight", "[128, 64]"],
    );
}

#[test]
fn unsupported_dtype() {
    let c = case();
    edit_tensors(&c.model, |t| {
        let x = t
            .iter_mut()
            .find(|t| t.name == "model.layers.0.mlp.gate_proj.weight")
            .unwrap();
        x.dtype = safetensors::Dtype::I16;
    });
    fails(
        &c,
        &[],
        &[
            "model.layers.0.mlp.gate_proj.weight",
            "I16",
            "expected BF16, F16 or F32",
        ],
    );
}

#[test]
fn nan_weight_is_refused() {
    let c = case();
    edit_tensors(&c.model, |t| {
        let x = t
            .iter_mut()
            .find(|t| t.name == "model.layers.1.self_attn.o_proj.weight")
            .unwrap();
        x.data[200..202].copy_from_slice(&half::bf16::NAN.to_le_bytes());
    });
    fails(
        &c,
        &[],
        &["model.layers.1.self_attn.o_proj.weight", "NaN", "index 100"],
    );
}

#[test]
fn bad_flags_name_the_flag() {
    let c = case();
    fails(&c, &["--bits", "3"], &["--bits", "4 or 8"]);
    fails(&c, &["--group-size", "100"], &["--group-size"]);
    fails(&c, &["--method", "magic"], &["--method", "rtn"]);
}

#[test]
fn unwritable_output_location() {
    let c = case();
    let file = c.model.join("config.json");
    let out = file.join("sub");
    let (code, _, err) = run(&[
        "quantize",
        "--model",
        c.model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("config.json"), "{err}");
    let (code, _, err) = run(&[
        "quantize",
        "--model",
        c.model.to_str().unwrap(),
        "--out",
        "/proc/hy-quant-out",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/proc/hy-quant-out"), "{err}");
}

/// A full disk, for real: a 256 KiB tmpfs in a private mount namespace (needs root, as CI
/// and the dev machines run; fails loudly otherwise).
#[test]
fn disk_full_leaves_nothing_behind() {
    let c = case();
    let mnt = c.out.with_file_name("small");
    std::fs::create_dir(&mnt).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=256k tmpfs {m} || exit 99; {bin} quantize --model {model} --out {m}/q --bits 8; code=$?; echo LISTING; ls -A {m}; exit $code",
        m = mnt.display(),
        bin = env!("CARGO_BIN_EXE_hy-quant"),
        model = c.model.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(99),
        "could not mount a tmpfs (this test needs root): {stderr}"
    );
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("No space left on device") && stderr.contains("model.safetensors"),
        "{stderr}"
    );
    let listing = stdout.split("LISTING").nth(1).unwrap_or("").trim();
    assert!(listing.is_empty(), "left behind: {listing}");
}

#[test]
fn device_flag_is_checked_and_cuda_without_a_gpu_is_a_clean_error() {
    let c = case();
    fails(&c, &["--device", "tpu"], &["--device", "auto, cpu or cuda"]);
    if hy_quant::backend::cuda::probe::device_count().is_err() {
        fails(&c, &["--device", "cuda"], &["cuda: "]);
        // auto falls back to the CPU and says why, once.
        let (code, _, err) = run(&[
            "quantize",
            "--model",
            c.model.to_str().unwrap(),
            "--out",
            c.out.to_str().unwrap(),
            "--device",
            "auto",
        ]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(err.matches("using the CPU backend").count(), 1, "{err}");
        // translate asks for the device before it loads anything.
        let (code, _, err) = run(&[
            "translate",
            "--model",
            c.model.to_str().unwrap(),
            "--device",
            "cuda",
            "hello",
        ]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("cuda: ") && !err.contains("panicked"), "{err}");
    }
}
