//! Text in, translation out: prompt building, tokenization and batched greedy generation tied
//! together for one model directory.

use std::path::Path;

use crate::backend::{Backend, CpuBackend, CudaBackend, Device, MemStats};
use crate::error::Result;
use crate::model::arch::ArchKind;
use crate::model::Checkpoint;
use crate::quant::QuantScheme;
use crate::runner::backend_model::{generate_on, BackendModel};
use crate::runner::forward::Model;
use crate::runner::generate::{generate, FinishReason, GenerateOptions, GenerateStats};
use crate::runner::prompt::{translation_instruction, ChatTemplate};
use crate::runner::tokenizer::{stop_token_ids, TextTokenizer};

/// One segment to translate.
#[derive(Clone, Debug)]
pub struct Prompt {
    pub text: String,
    /// Language code ("zh", "en", ...); `None` guesses zh/en from the text.
    pub source_lang: Option<String>,
    pub target_lang: String,
}

#[derive(Clone, Debug)]
pub struct Output {
    /// The translation (special tokens dropped, surrounding whitespace trimmed).
    pub text: String,
    /// Generated ids, stop token excluded.
    pub token_ids: Vec<u32>,
    pub n_prompt_tokens: usize,
    pub prompt_ids: Vec<u32>,
    pub finish: FinishReason,
    pub first_logits: Option<Vec<f32>>,
    pub margins: Vec<f32>,
}

/// What runs the decoder.
pub enum Engine {
    /// The CPU reference runner (f32 activations).
    Reference(Box<Model>),
    /// The decoder on the GPU (`runner::backend_model`: 16-bit linear inputs, f32 accumulate).
    Cuda {
        backend: Box<CudaBackend>,
        model: Box<BackendModel<CudaBackend>>,
    },
}

impl Engine {
    pub fn kind(&self) -> ArchKind {
        match self {
            Engine::Reference(m) => m.kind,
            Engine::Cuda { model, .. } => model.kind,
        }
    }

    pub fn quant(&self) -> Option<QuantScheme> {
        match self {
            Engine::Reference(m) => m.quant,
            Engine::Cuda { model, .. } => model.quant,
        }
    }

    pub fn vocab(&self) -> usize {
        match self {
            Engine::Reference(m) => m.dims.vocab,
            Engine::Cuda { model, .. } => model.dims.vocab,
        }
    }

    /// Bytes the runner holds for parameters (host memory on the CPU, device memory on the
    /// GPU).
    pub fn weight_bytes(&self) -> u64 {
        match self {
            Engine::Reference(m) => m.weight_bytes() as u64,
            Engine::Cuda { model, .. } => model.weight_bytes,
        }
    }

    /// "cpu" or the GPU's name.
    pub fn device_name(&self) -> String {
        match self {
            Engine::Reference(_) => CpuBackend::new().name(),
            Engine::Cuda { backend, .. } => backend.name(),
        }
    }
}

/// Device memory of a GPU run, for the VRAM report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VramReport {
    /// Bytes of the weights as held on the device.
    pub weights_bytes: u64,
    /// What our allocator counted for loading them.
    pub weights_allocated_bytes: u64,
    /// KV cache of the last `translate_batch` call: keys and values of every layer, slot and
    /// position in the model's 16-bit type (2 bytes each, as vLLM and transformers hold it).
    pub kv_cache_bytes: u64,
    /// High-water mark of our allocator since the model was loaded.
    pub peak_allocated_bytes: u64,
    /// Largest cuMemGetInfo delta since the backend opened (all device memory the process
    /// took: our buffers, cuBLAS workspace, kernels, context).
    pub peak_device_delta_bytes: u64,
}

/// A model directory ready to translate: weights, tokenizer, template, stop ids.
pub struct Translator {
    pub engine: Engine,
    pub tokenizer: TextTokenizer,
    pub template: ChatTemplate,
    pub options: GenerateOptions,
    /// Statistics of the last `translate_batch` call.
    pub last_stats: GenerateStats,
    /// KV-cache bytes (16-bit keys and values) of the last `translate_batch` call on the GPU.
    pub last_kv_cache_bytes: u64,
}

impl Translator {
    /// Loads a full-precision or GPTQ v1 checkpoint with its tokenizer for the CPU reference
    /// runner.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_on(dir, Device::Cpu(CpuBackend::new()))
    }

    /// `load`, with the decoder on `device` (weights copied to the GPU for `Device::Cuda`).
    pub fn load_on(dir: &Path, device: Device) -> Result<Self> {
        let ckpt = Checkpoint::open(dir)?;
        let tokenizer = TextTokenizer::from_dir(dir)?;
        // Embedding tables are often padded past the tokenizer's size (Qwen2: 151936 rows for
        // 151665 tokens), never the other way round: more token ids than rows means the
        // tokenizer belongs to another model.
        if tokenizer.vocab_size() > ckpt.config.vocab_size {
            return Err(crate::error::Error::Tokenizer {
                path: dir.join("tokenizer.json"),
                msg: format!(
                    "has {} tokens but config.json's vocab_size is {}: tokenizer and model do not match",
                    tokenizer.vocab_size(),
                    ckpt.config.vocab_size
                ),
            });
        }
        let template = ChatTemplate::detect(dir, ckpt.arch.kind, Some(&tokenizer))?;
        let stop_ids = stop_token_ids(dir, &ckpt.config.raw, Some(&tokenizer))?;
        let engine = match device {
            Device::Cpu(_) => Engine::Reference(Box::new(Model::load(&ckpt)?)),
            Device::Cuda(backend) => {
                let model = Box::new(BackendModel::load(backend.as_ref(), &ckpt)?);
                Engine::Cuda { backend, model }
            }
        };
        Ok(Translator {
            engine,
            tokenizer,
            template,
            options: GenerateOptions {
                stop_ids,
                ..GenerateOptions::default()
            },
            last_stats: GenerateStats::default(),
            last_kv_cache_bytes: 0,
        })
    }

    /// Device memory used so far, when the decoder runs on the GPU.
    pub fn vram(&self) -> Option<VramReport> {
        match &self.engine {
            Engine::Reference(_) => None,
            Engine::Cuda { backend, model } => {
                let m: MemStats = backend.memory();
                Some(VramReport {
                    weights_bytes: model.weight_bytes,
                    weights_allocated_bytes: model.allocated_bytes.unwrap_or(0),
                    kv_cache_bytes: self.last_kv_cache_bytes,
                    peak_allocated_bytes: m.peak_allocated_bytes,
                    peak_device_delta_bytes: m.device_peak_delta.unwrap_or(0),
                })
            }
        }
    }

    /// The full prompt text (chat template applied) of one segment.
    pub fn prompt_text(&self, p: &Prompt) -> Result<String> {
        let instruction =
            translation_instruction(&p.text, p.source_lang.as_deref(), &p.target_lang)?;
        Ok(self.template.render(&instruction))
    }

    pub fn prompt_ids(&self, p: &Prompt) -> Result<Vec<u32>> {
        self.tokenizer.encode(&self.prompt_text(p)?)
    }

    /// Translates every prompt (batched, greedy). Outputs are in input order.
    pub fn translate_batch(&mut self, prompts: &[Prompt]) -> Result<Vec<Output>> {
        let ids = prompts
            .iter()
            .map(|p| self.prompt_ids(p))
            .collect::<Result<Vec<_>>>()?;
        let (gens, stats) = match &self.engine {
            Engine::Reference(model) => generate(model, &ids, &self.options)?,
            Engine::Cuda { backend, model } => {
                let (g, s, kv) = generate_on(backend.as_ref(), model, &ids, &self.options)?;
                self.last_kv_cache_bytes = kv;
                (g, s)
            }
        };
        self.last_stats = stats;
        gens.into_iter()
            .zip(ids)
            .map(|(g, prompt_ids)| {
                Ok(Output {
                    text: self.tokenizer.decode(&g.token_ids)?.trim().to_string(),
                    token_ids: g.token_ids,
                    n_prompt_tokens: g.n_prompt_tokens,
                    prompt_ids,
                    finish: g.finish,
                    first_logits: g.first_logits,
                    margins: g.margins,
                })
            })
            .collect()
    }
}

/// Writes what `scripts/check_runner_with_transformers.py` compares against: `dir/meta.json`
/// (prompts, prompt ids, greedy outputs, per-step logit margins) and `dir/logits.f32` (the
/// first generated position's logits, [n_prompts, vocab] little-endian f32, in `items` order).
/// `outputs` must come from a `translate_batch` run with `options.keep_first_logits` set.
pub fn write_logit_dump(
    dir: &Path,
    model_dir: &Path,
    tr: &Translator,
    prompts: &[Prompt],
    outputs: &[Output],
) -> Result<()> {
    use crate::error::{Error, IoContext};
    use serde_json::json;
    std::fs::create_dir_all(dir).at(dir)?;
    let vocab = tr.engine.vocab();
    let mut raw = Vec::with_capacity(outputs.len() * vocab * 4);
    let mut items = Vec::with_capacity(outputs.len());
    for (p, o) in prompts.iter().zip(outputs) {
        let logits = o.first_logits.as_ref().ok_or_else(|| Error::Runner {
            msg: "logit dump asked for, but the run did not keep first-step logits".into(),
        })?;
        raw.extend(logits.iter().flat_map(|v| v.to_le_bytes()));
        items.push(json!({
            "source": p.text,
            "source_lang": p.source_lang,
            "target_lang": p.target_lang,
            "prompt_text": tr.prompt_text(p)?,
            "prompt_ids": o.prompt_ids,
            "output_ids": o.token_ids,
            "output_text": o.text,
            "finish": format!("{:?}", o.finish),
            "margins": o.margins,
        }));
    }
    let meta = json!({
        "model_dir": model_dir,
        "vocab": vocab,
        "template": format!("{:?}", tr.template),
        "stop_ids": tr.options.stop_ids,
        "max_new_tokens": tr.options.max_new_tokens,
        "logits_file": "logits.f32",
        "items": items,
    });
    let mut text = serde_json::to_vec_pretty(&meta).expect("JSON values serialize");
    text.push(b'\n');
    crate::io::staged_dir::write_file(&dir.join("meta.json"), &text)?;
    crate::io::staged_dir::write_file(&dir.join("logits.f32"), &raw)
}
