//! `BackendModel` with q|k|v and gate|up loaded as one fused linear each (the default) against
//! the same checkpoint loaded with separate linears (`LoadOptions { fuse: false }`): same
//! logits and tokens, same weight bytes. Dense bf16 and GPTQ v1 (RTN int4 g32 sym, int4 g32
//! asym, int8 per-row, calibrated GPTQ with act-order permute, whose g_idx is not sequential)
//! checkpoints, of the tiny HunYuan preset (QK-norm, no biases) and of a tiny Qwen2 (q/k/v
//! biases). On the CPU backend the two agree exactly (every output element is the same dot
//! product); the CUDA run is `#[ignore]`d ("needs a CUDA GPU").

use std::path::{Path, PathBuf};

use hy_quant::backend::cuda::{probe, CudaOptions};
use hy_quant::backend::{Backend, CpuBackend, CudaBackend};
use hy_quant::calib::CalibOptions;
use hy_quant::model::Checkpoint;
use hy_quant::progress::Silent;
use hy_quant::quant::gptq::ActOrder;
use hy_quant::quant::gptq_pipeline::GptqSettings;
use hy_quant::quant::grid::GridFit;
use hy_quant::quant::pipeline::{quantize, Method, QuantizeOptions};
use hy_quant::quant::QuantScheme;
use hy_quant::rng::SplitMix64;
use hy_quant::runner::backend_model::{generate_on, BackendModel, LoadOptions};
use hy_quant::runner::GenerateOptions;
use serde_json::json;

mod common;
use common::{bf16_tensor, decoder_linear_shapes, tiny_with_tokenizer, write_checkpoint};

/// A tiny Qwen2 with q/k/v biases and head_dim 32 (what the backend attention takes).
fn tiny_qwen2(dir: &Path) -> PathBuf {
    let (h, inter, heads, kv, layers, vocab) = (128usize, 256, 4, 2, 2, 1024);
    let hd = h / heads;
    let config = json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": h,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "vocab_size": vocab, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16"
    });
    let mut seed = 0u64;
    let mut rand = |scale: f32| {
        seed += 1;
        let s = seed;
        move |i: usize| SplitMix64(s << 32 | i as u64).normal() as f32 * scale
    };
    let mut t = vec![bf16_tensor(
        "model.embed_tokens.weight",
        &[vocab, h],
        rand(0.5),
    )];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in decoder_linear_shapes(h, inter, heads, kv, hd) {
            t.push(bf16_tensor(
                &format!("{p}.{name}.weight"),
                &shape,
                rand(0.08),
            ));
            if name.ends_with("q_proj") || name.ends_with("k_proj") || name.ends_with("v_proj") {
                t.push(bf16_tensor(
                    &format!("{p}.{name}.bias"),
                    &[shape[0]],
                    rand(0.3),
                ));
            }
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            t.push(bf16_tensor(&format!("{p}.{norm}.weight"), &[h], |i| {
                1.0 + (i % 7) as f32 * 0.05
            }));
        }
    }
    t.push(bf16_tensor("model.norm.weight", &[h], |_| 1.0));
    let out = dir.join("qwen2");
    write_checkpoint(&out, &config, t, 1);
    out
}

fn rtn(model: &Path, out: PathBuf, scheme: QuantScheme) -> PathBuf {
    quantize(
        &QuantizeOptions {
            model: model.to_path_buf(),
            out: out.clone(),
            method: Method::Rtn,
            scheme,
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

fn gptq_act_order(model: &Path, corpus: &Path, out: PathBuf) -> PathBuf {
    quantize(
        &QuantizeOptions {
            model: model.to_path_buf(),
            out: out.clone(),
            method: Method::Gptq,
            scheme: QuantScheme::new(4, 32, true).unwrap(),
            force: false,
            max_shard_bytes: 5_000_000_000,
            command: vec!["test".into()],
            gptq: Some(GptqSettings {
                calib: Some(corpus.to_path_buf()),
                calib_opts: CalibOptions {
                    samples: 4,
                    seqlen: 64,
                    seed: 0,
                },
                damp: 0.01,
                act_order: ActOrder::Permute,
                grid_fit: GridFit::MinMax,
                resume: false,
                backend_loop: false,
            }),
        },
        &Silent,
    )
    .unwrap();
    out
}

fn write_corpus(path: &Path) {
    let mut rng = SplitMix64(3);
    let lines: Vec<String> = (0..40)
        .map(|_| {
            let text = (0..60)
                .map(|_| format!("w{}", 5 + rng.next_u64() % 1000))
                .collect::<Vec<_>>()
                .join(" ");
            json!({"kind": "text", "lang": "en", "text": text, "source": "test"}).to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Every test checkpoint: (directory, whether its GPTQ g_idx is held on the device).
fn checkpoints(root: &Path) -> Vec<(PathBuf, bool)> {
    let hunyuan = tiny_with_tokenizer(root);
    let qwen2 = tiny_qwen2(root);
    let corpus = root.join("calib.jsonl");
    write_corpus(&corpus);
    let int4 = QuantScheme::new(4, 32, true).unwrap();
    let int4_asym = QuantScheme::new(4, 32, false).unwrap();
    let int8_row = QuantScheme::new(8, -1, false).unwrap();
    vec![
        (hunyuan.clone(), false),
        (rtn(&hunyuan, root.join("hy-q4"), int4), false),
        (
            gptq_act_order(&hunyuan, &corpus, root.join("hy-gptq-act")),
            true,
        ),
        (qwen2.clone(), false),
        (rtn(&qwen2, root.join("qwen2-q4a"), int4_asym), false),
        (rtn(&qwen2, root.join("qwen2-q8"), int8_row), false),
    ]
}

/// The model loaded with `fused` against separate linears and unfused ops on `b`; `tol` on
/// the first logits relative to their largest magnitude (0: bit-identical, and identical
/// tokens).
fn fused_matches_unfused<B: Backend>(b: &B, fused: LoadOptions, tol: f64) {
    let plain = LoadOptions {
        fuse: false,
        fuse_ops: false,
        graphs: false,
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut r = SplitMix64(11);
    let prompts: Vec<Vec<u32>> = [6usize, 1, 9]
        .iter()
        .map(|&n| (0..n).map(|_| 5 + (r.next_u64() % 1000) as u32).collect())
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: 5,
        max_batch: 2,
        stop_ids: Vec::new(),
        keep_first_logits: true,
    };
    for (dir, g_idx_on_device) in checkpoints(tmp.path()) {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let ckpt = Checkpoint::open(&dir).unwrap();
        let layers = ckpt.arch.num_layers();
        let hidden = ckpt.arch.config.hidden_size;
        let opts_fused = fused;
        let fused = BackendModel::load_with(b, &ckpt, opts_fused).unwrap();
        let ckpt = Checkpoint::open(&dir).unwrap();
        let separate = BackendModel::load_with(b, &ckpt, plain).unwrap();
        let n = if opts_fused.fuse { layers } else { 0 };
        assert_eq!(fused.fused_layers(), (n, n), "{name}");
        assert_eq!(separate.fused_layers(), (0, 0), "{name}");
        // One g_idx [hidden] per fused group instead of one per part (q|k|v: 2 fewer,
        // gate|up: 1 fewer) when the g_idx is not sequential; the same bytes otherwise.
        let saved = if g_idx_on_device && opts_fused.fuse {
            (layers * 3 * hidden * 4) as u64
        } else {
            0
        };
        assert_eq!(
            fused.weight_bytes + saved,
            separate.weight_bytes,
            "{name} weight bytes"
        );
        if let (Some(f), Some(s)) = (fused.allocated_bytes, separate.allocated_bytes) {
            assert_eq!(f + saved, s, "{name} allocated bytes");
        }
        let (a, _, _) = generate_on(b, &fused, &prompts, &opts).unwrap();
        let (w, _, _) = generate_on(b, &separate, &prompts, &opts).unwrap();
        let mut worst = 0f64;
        for (i, (a, w)) in a.iter().zip(&w).enumerate() {
            let (la, lw) = (
                a.first_logits.as_ref().unwrap(),
                w.first_logits.as_ref().unwrap(),
            );
            if tol == 0.0 {
                assert_eq!(la, lw, "{name} prompt {i} first logits");
                assert_eq!(a.token_ids, w.token_ids, "{name} prompt {i} tokens");
                assert_eq!(a.margins, w.margins, "{name} prompt {i} margins");
            }
            let scale = lw.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            let err = la
                .iter()
                .zip(lw)
                .map(|(x, y)| (x - y).abs() as f64)
                .fold(0.0, f64::max)
                / scale;
            worst = worst.max(err);
        }
        println!(
            "{name} on {} ({opts_fused:?}): vs separate first logits max rel err {worst:.3e}, \
             weights {} B",
            b.name(),
            fused.weight_bytes
        );
        assert!(worst <= tol, "{name}: {worst:e} > {tol:e}");
    }
}

/// The three fused configurations: linears, linears + small ops, small ops alone (q|k|v
/// separate, so `qkv_rope_norm` is not used but the fused norms are). With the small ops
/// the greedy picks after the first step come from the device (`Backend::argmax`).
const FUSED: [LoadOptions; 3] = [
    LoadOptions {
        fuse: true,
        fuse_ops: false,
        graphs: false,
    },
    LoadOptions {
        fuse: true,
        fuse_ops: true,
        graphs: false,
    },
    LoadOptions {
        fuse: false,
        fuse_ops: true,
        graphs: false,
    },
];

#[test]
fn fused_linears_match_separate_cpu() {
    for opts in FUSED {
        fused_matches_unfused(&CpuBackend::new(), opts, 0.0);
    }
}

/// The GPU's GEMMs may sum in another order for the wider fused matrices; the 16-bit KV cache
/// can turn that into one bf16 ulp of a key (see `runner_body` in tests/backend_ops.rs).
#[test]
#[ignore = "needs a CUDA GPU"]
fn fused_linears_match_separate_cuda() {
    let b = match CudaBackend::new(&CudaOptions::default()) {
        Ok(b) => b,
        Err(e) => panic!("no CUDA backend: {e}\n{}", probe::describe()),
    };
    for opts in FUSED {
        fused_matches_unfused(&b, opts, 5e-3);
    }
}

/// Decode steps replayed from a recorded graph against the same steps run one op at a time,
/// on `b`: the same kernels on the same inputs, so the same tokens and margins bit for bit;
/// returns the replays and the note of the graphs run (why nothing was recorded, if so).
fn graphs_match_eager<B: Backend>(b: &B) -> (usize, Option<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut r = SplitMix64(5);
    let prompts: Vec<Vec<u32>> = [5usize, 3, 8, 2]
        .iter()
        .map(|&n| (0..n).map(|_| 5 + (r.next_u64() % 1000) as u32).collect())
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: 12,
        max_batch: 3,
        stop_ids: Vec::new(),
        keep_first_logits: false,
    };
    let (mut replays, mut note) = (0, None);
    for (dir, _) in checkpoints(tmp.path()).into_iter().take(3) {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let load = |graphs| {
            let opts = LoadOptions {
                fuse: true,
                fuse_ops: true,
                graphs,
            };
            BackendModel::load_with(b, &Checkpoint::open(&dir).unwrap(), opts).unwrap()
        };
        let (eager, recorded) = (load(false), load(true));
        let (want, s0, _) = generate_on(b, &eager, &prompts, &opts).unwrap();
        let (got, s1, _) = generate_on(b, &recorded, &prompts, &opts).unwrap();
        assert_eq!(s0.graph_replays, 0, "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.token_ids, w.token_ids, "{name} prompt {i} tokens");
            assert_eq!(g.margins, w.margins, "{name} prompt {i} margins");
        }
        println!(
            "{name} on {}: {} decode steps replayed, note {:?}",
            b.name(),
            s1.graph_replays,
            s1.graph_note
        );
        replays += s1.graph_replays;
        note = s1.graph_note;
    }
    (replays, note)
}

/// The CPU records nothing: every step runs as usual, and with graphs on by default the
/// stats stay silent (`translate` prints no graph line for CPU runs).
#[test]
fn graphs_fall_back_on_the_cpu() {
    let (replays, note) = graphs_match_eager(&CpuBackend::new());
    assert_eq!(replays, 0);
    assert_eq!(note, None);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn graphs_match_eager_cuda() {
    let opts = CudaOptions {
        own_stream: true,
        ..CudaOptions::default()
    };
    let b = match CudaBackend::new(&opts) {
        Ok(b) => b,
        Err(e) => panic!("no CUDA backend: {e}\n{}", probe::describe()),
    };
    let (replays, note) = graphs_match_eager(&b);
    assert!(note.is_none(), "graphs not recorded: {note:?}");
    // Four prompts, three slots, twelve new tokens: most steps decode only (and from the
    // third of a batch size on, replay).
    assert!(replays > 10, "only {replays} replays");
}
