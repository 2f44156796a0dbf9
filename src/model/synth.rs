//! Random-weight checkpoints with the exact tensor names, shapes, config and sharding of real
//! models (../shared/models.md), for tests and benchmarks. Weights are drawn per tensor from a
//! seeded generator (independent of thread count), roughly N(0, 0.02) with a few heavy input
//! channels, the outlier pattern real LLM weights show; norms scatter around 1.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{json, Value};

use crate::dtype::{self, DType};
use crate::error::{Error, Result};
use crate::io::st_writer::index_json;
use crate::io::staged_dir::write_file;
use crate::io::{plan_shards, PlannedTensor, ShardWriter, StagedDir};
use crate::model::arch::{Arch, TensorSpec};
use crate::model::config::ModelConfig;
use crate::rng::SplitMix64;

/// Shards of a synthesized checkpoint hold at most this much data (HF's 5GB default).
pub const MAX_SHARD_BYTES: u64 = 5_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// 2 layers, hidden 128: fast tests.
    Tiny,
    HyMt15_1_8b,
    HyMt15_7b,
}

impl Preset {
    pub const NAMES: &'static str = "tiny, hy-mt1.5-1.8b, hy-mt1.5-7b";

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "tiny" => Preset::Tiny,
            "hy-mt1.5-1.8b" => Preset::HyMt15_1_8b,
            "hy-mt1.5-7b" | "hunyuan-mt-7b" => Preset::HyMt15_7b,
            _ => {
                return Err(Error::flag(
                    "--preset",
                    format!("unknown preset {s:?}; expected {}", Self::NAMES),
                ))
            }
        })
    }

    /// (hidden, intermediate, layers, heads, kv heads, head_dim, vocab)
    fn dims(self) -> (usize, usize, usize, usize, usize, usize, usize) {
        match self {
            Preset::Tiny => (128, 384, 2, 4, 2, 32, 1024),
            Preset::HyMt15_1_8b => (2048, 6144, 32, 16, 4, 128, 120818),
            Preset::HyMt15_7b => (4096, 14336, 32, 32, 8, 128, 128167),
        }
    }
}

/// config.json of a HunYuan dense model with the preset's dimensions.
pub fn hunyuan_config(preset: Preset, dtype: DType) -> Value {
    let (hidden, inter, layers, heads, kv, head_dim, vocab) = preset.dims();
    json!({
        "architectures": ["HunYuanDenseV1ForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "attention_head_dim": head_dim,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "max_position_embeddings": 32768,
        "mlp_bias": false,
        "model_type": "hunyuan_v1_dense",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv,
        "pad_token_id": 0,
        "rms_norm_eps": 1e-5,
        "rope_scaling": {"alpha": 1000.0, "beta_fast": 32, "beta_slow": 1, "factor": 1.0,
                          "mscale": 1.0, "mscale_all_dim": 1.0, "type": "dynamic"},
        "rope_theta": 10000.0,
        "tie_word_embeddings": true,
        "torch_dtype": dtype.torch_name(),
        "use_cache": true,
        "use_qk_norm": true,
        "vocab_size": vocab
    })
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Deterministic values of one tensor. Chunks get their own streams so generation is parallel
/// and the result independent of scheduling.
pub fn synth_values(name: &str, shape: &[usize], seed: u64) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let numel: usize = shape.iter().product();
    let is_norm = name.ends_with("norm.weight");
    let cols = *shape.last().unwrap_or(&1);
    let base = fnv1a(name) ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
    // About 1 in 128 input channels is an outlier channel, 6x wider.
    let outlier = |col: usize| (fnv1a(&format!("{name}#{col}")) ^ base) % 128 == 0;
    let col_scale: Vec<f32> = if is_norm || shape.len() < 2 {
        vec![1.0; cols]
    } else {
        (0..cols)
            .map(|c| if outlier(c) { 6.0 } else { 1.0 })
            .collect()
    };
    let mut out = vec![0f32; numel];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(ci, chunk)| {
            let mut rng = SplitMix64(base ^ (ci as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
            for (j, v) in chunk.iter_mut().enumerate() {
                // Box-Muller, one value per draw pair: simple and plenty fast for synthesis.
                let (u1, u2) = (rng.unit(), rng.unit());
                let z = ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32;
                let col = (ci * CHUNK + j) % cols;
                *v = if is_norm {
                    1.0 + 0.1 * z
                } else {
                    0.02 * z * col_scale[col]
                };
            }
        });
    out
}

pub struct SynthOptions {
    pub preset: Preset,
    pub dtype: DType,
    pub seed: u64,
    pub out: PathBuf,
    pub force: bool,
}

/// Special tokens of the synthetic tokenizer, at ids 0.. (ids 0-2 match generation_config's
/// pad/bos/eos; the HunYuan chat-template tokens follow).
pub const SYNTH_SPECIALS: [&str; 6] = [
    "<｜hy_▁pad▁｜>",
    "<｜hy_begin▁of▁sentence｜>",
    "<｜hy_place▁holder▁no▁2｜>",
    "<｜hy_User｜>",
    "<｜hy_Assistant｜>",
    "<unk>",
];

/// A word-level `tokenizer.json` covering ids 0..vocab: the specials above, then `w6`,
/// `w7`, ... Real text mostly maps to `<unk>`; what matters for benchmarks and tests is that
/// every id exists and the chat template's tokens are special tokens.
pub fn tokenizer_json(vocab: usize) -> Value {
    let mut words = serde_json::Map::new();
    let mut added = Vec::new();
    for (i, s) in SYNTH_SPECIALS.iter().enumerate() {
        words.insert(s.to_string(), json!(i));
        if *s != "<unk>" {
            added.push(
                json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}),
            );
        }
    }
    for i in SYNTH_SPECIALS.len()..vocab {
        words.insert(format!("w{i}"), json!(i));
    }
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": false},
        "model": {"type": "WordLevel", "vocab": Value::Object(words), "unk_token": "<unk>"}
    })
}

/// Writes a random-weight HunYuan dense checkpoint with a word-level tokenizer. Returns the
/// output directory.
pub fn synth(opts: &SynthOptions, progress: &dyn crate::progress::Progress) -> Result<PathBuf> {
    if !opts.dtype.is_float() {
        return Err(Error::flag("--dtype", "expected bf16, f16 or f32"));
    }
    let config = hunyuan_config(opts.preset, opts.dtype);
    let arch = Arch::from_config(ModelConfig::from_json(
        Path::new("config.json"),
        config.clone(),
    )?)?;
    let specs: Vec<TensorSpec> = arch.expected_tensors();
    let planned: Vec<PlannedTensor> = specs
        .iter()
        .map(|s| PlannedTensor {
            name: s.name.clone(),
            dtype: opts.dtype.st_name().into(),
            shape: s.shape.clone(),
            nbytes: s.shape.iter().product::<usize>() * opts.dtype.size(),
        })
        .collect();
    let total: u64 = planned.iter().map(|t| t.nbytes as u64).sum();
    let single = total <= MAX_SHARD_BYTES;
    let shards = plan_shards(planned, MAX_SHARD_BYTES, single);
    let staged = StagedDir::prepare(&opts.out, opts.force, &[])?;
    progress.begin("synth", specs.len() as u64, total);
    let mut spec_iter = specs.iter();
    for plan in &shards {
        let mut w = ShardWriter::create(staged.path(), plan.clone())?;
        for t in &plan.tensors {
            let spec = spec_iter.next().expect("plans cover the specs in order");
            let values = synth_values(&spec.name, &spec.shape, opts.seed);
            let bytes = dtype::from_f32(opts.dtype, &values);
            w.write(&t.name, &bytes)?;
            progress.step(bytes.len() as u64, &t.name);
        }
        w.finish()?;
    }
    progress.end();
    let mut cfg = serde_json::to_vec_pretty(&config).expect("config serializes");
    cfg.push(b'\n');
    write_file(&staged.path().join("config.json"), &cfg)?;
    let gen = json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "do_sample": false});
    let (.., vocab) = opts.preset.dims();
    let mut tok = serde_json::to_vec(&tokenizer_json(vocab)).expect("serializes");
    tok.push(b'\n');
    write_file(&staged.path().join("tokenizer.json"), &tok)?;
    write_file(
        &staged.path().join("generation_config.json"),
        &serde_json::to_vec_pretty(&gen).expect("serializes"),
    )?;
    if !single {
        let mut idx = serde_json::to_vec_pretty(&index_json(&shards)).expect("serializes");
        idx.push(b'\n');
        write_file(
            &staged.path().join(crate::model::checkpoint::INDEX_FILE),
            &idx,
        )?;
    }
    staged.commit()
}

#[cfg(test)]
mod tokenizer_tests {
    use super::*;
    use crate::runner::prompt::ChatTemplate;
    use crate::runner::tokenizer::TextTokenizer;

    #[test]
    fn synth_tokenizer_covers_the_vocab_and_the_chat_template() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tiny");
        synth(
            &SynthOptions {
                preset: Preset::Tiny,
                dtype: DType::BF16,
                seed: 0,
                out: out.clone(),
                force: false,
            },
            &crate::progress::Silent,
        )
        .unwrap();
        let tok = TextTokenizer::from_dir(&out).unwrap();
        let (.., vocab) = Preset::Tiny.dims();
        assert_eq!(tok.vocab_size(), vocab);
        let ids = tok
            .encode(&ChatTemplate::Hunyuan.render("w7 w1023 hello"))
            .unwrap();
        // BOS, User, w7, w1023, <unk>, Assistant.
        assert_eq!(ids, vec![1, 3, 7, 1023, 5, 4]);
        assert_eq!(tok.special_token_id("<｜hy_place▁holder▁no▁2｜>"), Some(2));
    }
}
