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
