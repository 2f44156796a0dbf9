//! `tokenizer.json` through the `tokenizers` crate, plus the ids generation must stop at.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, IoContext, Result};

/// Token spellings that end an assistant turn in the supported families. Each is used only if
/// the tokenizer has it as an added (special) token.
pub const STOP_TOKEN_TEXTS: &[&str] = &[
    "<|im_end|>",    // ChatML (Qwen2)
    "<|endoftext|>", // Qwen2 / GPT-2 style end of document
    "<|eot_id|>",    // Llama 3 end of turn
    "<|end_of_text|>",
    "</s>",
    "<｜hy_place▁holder▁no▁2｜>", // HunYuan end of assistant turn (chat template's eos)
    "<｜hy_end▁of▁sentence｜>",
];

/// A loaded tokenizer.
pub struct TextTokenizer {
    pub path: PathBuf,
    inner: tokenizers::Tokenizer,
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::Missing {
                path,
                what: "tokenizer.json (needed to turn text into token ids)".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            msg: format!("cannot load: {e}"),
        })?;
        Ok(TextTokenizer { path, inner })
    }

    /// Ids of `text`. Special-token spellings in the text (`<|im_start|>`, ...) become their
    /// ids; no BOS/EOS is added (chat templates write their own, as transformers'
    /// `apply_chat_template(tokenize=True)` does).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                msg: format!("cannot encode {:?}: {e}", truncate(text)),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::Tokenizer {
            path: self.path.clone(),
            msg: format!("cannot decode {} ids: {e}", ids.len()),
        })
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Id of `token` only when it is an added (special) token, not an ordinary vocabulary
    /// entry that happens to be spelled the same (Qwen2's BPE vocabulary holds a plain "</s>").
    pub fn special_token_id(&self, token: &str) -> Option<u32> {
        let id = self.inner.token_to_id(token)?;
        self.inner
            .get_added_tokens_decoder()
            .contains_key(&id)
            .then_some(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|n| n as u32))
            .collect(),
        _ => Vec::new(),
    }
}

/// Ids that end generation: `eos_token_id` of generation_config.json and config.json (int or
/// list), plus every `STOP_TOKEN_TEXTS` entry that is a special token of the tokenizer.
/// Sorted, unique.
pub fn stop_token_ids(
    dir: &Path,
    config: &serde_json::Map<String, Value>,
    tok: Option<&TextTokenizer>,
) -> Result<Vec<u32>> {
    let mut ids = ids_of(config.get("eos_token_id"));
    let gen_path = dir.join("generation_config.json");
    if gen_path.is_file() {
        let text = std::fs::read_to_string(&gen_path).at(&gen_path)?;
        let gen: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: gen_path.clone(),
            source,
        })?;
        ids.extend(ids_of(gen.get("eos_token_id")));
    }
    if let Some(tok) = tok {
        ids.extend(
            STOP_TOKEN_TEXTS
                .iter()
                .filter_map(|t| tok.special_token_id(t)),
        );
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}
