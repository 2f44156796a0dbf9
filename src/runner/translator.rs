//! Text in, translation out: prompt building, tokenization and batched greedy generation tied
//! together for one model directory.

use std::path::Path;

use crate::error::Result;
use crate::model::Checkpoint;
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

/// A model directory ready to translate: weights, tokenizer, template, stop ids.
pub struct Translator {
    pub model: Model,
    pub tokenizer: TextTokenizer,
    pub template: ChatTemplate,
    pub options: GenerateOptions,
    /// Statistics of the last `translate_batch` call.
    pub last_stats: GenerateStats,
}

impl Translator {
    /// Loads a full-precision or GPTQ v1 checkpoint with its tokenizer.
    pub fn load(dir: &Path) -> Result<Self> {
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
        let model = Model::load(&ckpt)?;
        Ok(Translator {
            model,
            tokenizer,
            template,
            options: GenerateOptions {
                stop_ids,
                ..GenerateOptions::default()
            },
            last_stats: GenerateStats::default(),
        })
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
        let (gens, stats) = generate(&self.model, &ids, &self.options)?;
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
    let vocab = tr.model.dims.vocab;
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
