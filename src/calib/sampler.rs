//! From corpus records to the calibration batch: render each record the way the model sees
//! its real workload, tokenize, shuffle by seed and pack into `samples` rows of `seqlen`
//! tokens.
//!
//! Translation pairs become the model's own chat template around its translation prompt
//! (`runner::prompt`), followed by the reference translation as the assistant's answer and the
//! template's end-of-turn token: the activations GPTQ sees are those of real translation
//! requests (AutoFP8 #35: English-only calibration hurt Traditional Chinese). Plain texts are
//! appended as is, each followed by the tokenizer's end-of-document token when it has one.
//! Documents are packed back to back; the last one is cut where the batch is full.

use serde::{Deserialize, Serialize};

use crate::calib::corpus::{Corpus, Record};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::runner::prompt::{translation_instruction, ChatTemplate};
use crate::runner::tokenizer::TextTokenizer;

/// Size and sampling of the calibration batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalibOptions {
    pub samples: usize,
    pub seqlen: usize,
    pub seed: u64,
}

impl CalibOptions {
    pub fn check(&self) -> Result<()> {
        if self.samples == 0 {
            return Err(Error::flag("--calib-samples", "must be at least 1"));
        }
        if self.seqlen < 16 {
            return Err(Error::flag(
                "--calib-seqlen",
                format!("{} is too short; use at least 16 tokens", self.seqlen),
            ));
        }
        Ok(())
    }
}

/// The packed calibration batch: `samples` rows of `seqlen` token ids.
#[derive(Clone, Debug)]
pub struct CalibSet {
    pub samples: usize,
    pub seqlen: usize,
    /// [samples * seqlen], row-major.
    pub tokens: Vec<u32>,
    /// Records (whole or the last one cut) that went into the batch.
    pub documents: usize,
    pub pairs: usize,
}

impl CalibSet {
    pub fn sample(&self, i: usize) -> &[u32] {
        &self.tokens[i * self.seqlen..(i + 1) * self.seqlen]
    }
}

/// Turns records into token ids for one model.
pub struct Renderer<'a> {
    pub tokenizer: &'a TextTokenizer,
    pub template: &'a ChatTemplate,
}

/// End-of-document tokens, first one the tokenizer has wins.
const DOC_END: &[&str] = &[
    "<|endoftext|>",
    "<｜hy_end▁of▁sentence｜>",
    "<|end_of_text|>",
    "</s>",
];

impl Renderer<'_> {
    fn end_of_turn(&self) -> &'static str {
        match self.template {
            ChatTemplate::ChatMl { .. } => "<|im_end|>\n",
            ChatTemplate::Hunyuan => "<｜hy_place▁holder▁no▁2｜>",
            ChatTemplate::Llama3 => "<|eot_id|>",
        }
    }

    /// The text of one record as fed to the model.
    pub fn text(&self, record: &Record) -> Result<String> {
        Ok(match record {
            Record::Pair {
                src_lang,
                tgt_lang,
                src,
                tgt,
            } => {
                let instruction = translation_instruction(src, Some(src_lang), tgt_lang)?;
                let mut s = self.template.render(&instruction);
                s.push_str(tgt);
                s.push_str(self.end_of_turn());
                s
            }
            Record::Text { text, .. } => {
                let mut s = text.clone();
                if let Some(end) = DOC_END
                    .iter()
                    .find(|t| self.tokenizer.special_token_id(t).is_some())
                {
                    s.push_str(end);
                }
                s
            }
        })
    }

    pub fn ids(&self, record: &Record) -> Result<Vec<u32>> {
        self.tokenizer.encode(&self.text(record)?)
    }
}

/// Deterministic Fisher-Yates permutation of 0..n.
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64(seed);
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Packs the corpus into the calibration batch. Records are visited in seed order and
/// tokenized only until the batch is full, so a large corpus costs little.
pub fn build(corpus: &Corpus, renderer: &Renderer<'_>, opts: &CalibOptions) -> Result<CalibSet> {
    opts.check()?;
    let need = opts.samples * opts.seqlen;
    let mut tokens = Vec::with_capacity(need);
    let (mut documents, mut pairs) = (0, 0);
    for i in shuffled(corpus.records.len(), opts.seed) {
        if tokens.len() >= need {
            break;
        }
        let record = &corpus.records[i];
        let ids = renderer.ids(record).map_err(|e| match e {
            Error::Flag { msg, .. } => Error::Calib {
                path: corpus_label(corpus),
                msg: format!("record {}: {msg}", i + 1),
            },
            e => e,
        })?;
        let take = ids.len().min(need - tokens.len());
        tokens.extend_from_slice(&ids[..take]);
        documents += 1;
        pairs += matches!(record, Record::Pair { .. }) as usize;
    }
    if tokens.len() < need {
        return Err(Error::Calib {
            path: corpus_label(corpus),
            msg: format!(
                "all {} records give only {} tokens; --calib-samples {} x --calib-seqlen {} needs {need}. \
                 Lower them or add text",
                corpus.records.len(),
                tokens.len(),
                opts.samples,
                opts.seqlen
            ),
        });
    }
    Ok(CalibSet {
        samples: opts.samples,
        seqlen: opts.seqlen,
        tokens,
        documents,
        pairs,
    })
}

fn corpus_label(corpus: &Corpus) -> std::path::PathBuf {
    match corpus.files.as_slice() {
        [(p, _)] => p.clone(),
        [(p, _), ..] => p
            .parent()
            .map(|d| d.to_path_buf())
            .unwrap_or_else(|| p.clone()),
        [] => "(empty corpus)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let a = shuffled(100, 1);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, shuffled(100, 1));
        assert_ne!(a, shuffled(100, 2));
        assert!(shuffled(0, 3).is_empty());
    }

    #[test]
    fn options_are_checked() {
        let ok = CalibOptions {
            samples: 1,
            seqlen: 16,
            seed: 0,
        };
        assert!(ok.check().is_ok());
        let e = CalibOptions { samples: 0, ..ok }.check().unwrap_err();
        assert!(e.to_string().contains("--calib-samples"));
        let e = CalibOptions { seqlen: 4, ..ok }.check().unwrap_err();
        assert!(e.to_string().contains("--calib-seqlen"));
    }
}
