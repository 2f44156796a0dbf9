//! GGUF tokenizer metadata -> `tokenizer.json` + `tokenizer_config.json` (+ the ids for
//! `generation_config.json`).
//!
//! Only byte-level BPE (`tokenizer.ggml.model = "gpt2"`) is handled: the family of Qwen2,
//! Llama 3 and HunYuan. The construction follows transformers
//! `integrations/gguf/gguf_tokenizer_mapping.py` (`byte_level_tokenizer`,
//! `add_gguf_special_tokens`, `set_split_regex`; older releases: `integrations/ggml.py`
//! `GGUFQwen2Converter` / `GGUFGPTConverter`), reimplemented here as JSON:
//! - BPE model over all `tokenizer.ggml.tokens` (id = position) with `tokenizer.ggml.merges`;
//!   a token spelled outside the GPT-2 byte alphabet is respelled through it (as transformers).
//! - tokens typed CONTROL (3) become special added tokens, USER_DEFINED (4) non-special added
//!   tokens (llama.cpp `convert_hf_to_gguf.py` writes exactly those two types for HF added
//!   tokens that are / are not `special`).
//! - `tokenizer.ggml.pre` picks the split regex of the original tokenizer. The regexes are those
//!   of the original `tokenizer.json` files, which llama.cpp mirrors in `src/llama-vocab.cpp`
//!   (`llm_tokenizer_bpe`): Qwen2 (`models/qwen2/tokenization_qwen2.py` PRETOKENIZE_REGEX),
//!   Llama 3, and DeepSeek-V3's three-stage split that llama.cpp also uses for `hunyuan-dense`.
//!
//! Deliberate differences from transformers' GGUF path, each matching the original HF
//! tokenizer instead: Qwen2-family vocabularies get the `NFC` normalizer the original Qwen2
//! `tokenizer.json` has (transformers 4.x `GGUFQwen2Converter` also set it; 5.x drops it);
//! Llama 3 vocabularies get `ignore_merges: true` like the original `tokenizer.json` (and like
//! llama.cpp); control tokens spelled outside the byte alphabet (e.g. DeepSeek/HunYuan's
//! `<｜...｜>`) are still added as special tokens (transformers skips them).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::reader::{GgufError, GgufFile};

pub const TOKEN_TYPE_NORMAL: i64 = 1;
pub const TOKEN_TYPE_CONTROL: i64 = 3;
pub const TOKEN_TYPE_USER_DEFINED: i64 = 4;

const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DEEPSEEK3_SPLITS: &[&str] = &[
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreKind {
    Qwen2,
    Llama3,
    DeepSeek3,
    Gpt2,
}

/// `tokenizer.ggml.pre` values this converter knows, with the split they stand for.
const PRE_TABLE: &[(&str, PreKind)] = &[
    ("qwen2", PreKind::Qwen2),
    ("deepseek-r1-qwen", PreKind::Qwen2),
    ("megrez", PreKind::Qwen2),
    ("llama-bpe", PreKind::Llama3),
    ("llama3", PreKind::Llama3),
    ("llama-v3", PreKind::Llama3),
    ("smaug-bpe", PreKind::Llama3),
    ("dbrx", PreKind::Llama3),
    ("falcon3", PreKind::Llama3),
    ("hunyuan-dense", PreKind::DeepSeek3),
    ("deepseek-v3", PreKind::DeepSeek3),
    ("gpt-2", PreKind::Gpt2),
];

/// The generated files' contents.
#[derive(Debug, Clone)]
pub struct TokenizerFiles {
    pub tokenizer_json: Value,
    pub tokenizer_config_json: Value,
    pub vocab_size: usize,
    pub added_special: usize,
    pub added_non_special: usize,
    /// Token strings that occur more than once (the last id wins in the BPE vocab).
    pub duplicate_tokens: usize,
}

fn invalid(g: &GgufFile, what: &str, detail: String) -> GgufError {
    GgufError::Invalid {
        path: g.path().to_path_buf(),
        what: what.into(),
        detail,
    }
}

/// GPT-2's reversible byte -> char table (`bytes_to_unicode` in openai/gpt-2 `encoder.py`,
/// transformers `convert_slow_tokenizer.py`): printable Latin-1 bytes map to themselves, the
/// other 68 bytes to U+0100.. in byte order.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\0')
        };
    }
    table
}

fn split(pattern: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": use_regex})
}

/// `context_length` becomes `model_max_length`.
pub fn build_tokenizer(g: &GgufFile, context_length: usize) -> Result<TokenizerFiles, GgufError> {
    let model = g.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(invalid(
            g,
            "metadata key 'tokenizer.ggml.model'",
            format!(
                "tokenizer model '{model}' is not supported (supported: gpt2 = byte-level BPE)"
            ),
        ));
    }
    let pre = g.opt_str("tokenizer.ggml.pre")?.unwrap_or("gpt-2");
    let kind = PRE_TABLE
        .iter()
        .find(|(n, _)| *n == pre)
        .map(|(_, k)| *k)
        .ok_or_else(|| {
            invalid(
                g,
                "metadata key 'tokenizer.ggml.pre'",
                format!(
                    "pre-tokenizer '{pre}' is not supported (supported: {})",
                    PRE_TABLE
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
    let tokens =
        g.opt_str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| GgufError::MissingKey {
                path: g.path().to_path_buf(),
                key: "tokenizer.ggml.tokens".into(),
            })?;
    let n = tokens.len();
    let types = match g.opt_int_array("tokenizer.ggml.token_type")? {
        Some(t) if t.len() == n => t,
        Some(t) => {
            return Err(invalid(
                g,
                "metadata key 'tokenizer.ggml.token_type'",
                format!("has {} entries, expected one per token ({n})", t.len()),
            ))
        }
        None => vec![TOKEN_TYPE_NORMAL; n],
    };
    let merges =
        g.opt_str_array("tokenizer.ggml.merges")?
            .ok_or_else(|| GgufError::MissingKey {
                path: g.path().to_path_buf(),
                key: "tokenizer.ggml.merges".into(),
            })?;

    let spelling = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));

    let mut vocab = Map::new();
    let mut duplicate_tokens = 0;
    for (id, tok) in tokens.iter().enumerate() {
        let key = if in_alphabet(tok) {
            tok.to_string()
        } else {
            tok.bytes().map(|b| spelling[b as usize]).collect()
        };
        if vocab.insert(key, json!(id)).is_some() {
            duplicate_tokens += 1;
        }
    }
    let mut merge_pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => {
                merge_pairs.push(json!([a, b]))
            }
            _ => {
                return Err(invalid(
                    g,
                    "metadata key 'tokenizer.ggml.merges'",
                    format!("merge {i} is {m:?}; expected two tokens separated by one space"),
                ))
            }
        }
    }

    let mut added = Vec::new();
    let mut added_decoder = Map::new();
    let (mut added_special, mut added_non_special) = (0, 0);
    for (id, (tok, ty)) in tokens.iter().zip(&types).enumerate() {
        let special = match *ty {
            TOKEN_TYPE_CONTROL => true,
            TOKEN_TYPE_USER_DEFINED => false,
            _ => continue,
        };
        if special {
            added_special += 1
        } else {
            added_non_special += 1
        }
        added.push(json!({
            "id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": special
        }));
        added_decoder.insert(
            id.to_string(),
            json!({"content": tok, "lstrip": false, "normalized": false, "rstrip": false,
                   "single_word": false, "special": special}),
        );
    }

    let pre_tokenizer = match kind {
        PreKind::Qwen2 => {
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]})
        }
        PreKind::Llama3 => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]})
        }
        PreKind::DeepSeek3 => {
            let mut v: Vec<Value> = DEEPSEEK3_SPLITS.iter().map(|p| split(p)).collect();
            v.push(byte_level(false));
            json!({"type": "Sequence", "pretokenizers": v})
        }
        PreKind::Gpt2 => byte_level(true),
    };
    let normalizer = match kind {
        PreKind::Qwen2 => json!({"type": "NFC"}),
        _ => Value::Null,
    };

    let id_of = |key: &str| -> Result<Option<(u64, &str)>, GgufError> {
        match g.opt_u64(key)? {
            None => Ok(None),
            Some(id) if (id as usize) < n => Ok(Some((id, tokens[id as usize]))),
            Some(id) => Err(invalid(
                g,
                &format!("metadata key '{key}'"),
                format!("token id {id} is not below the vocabulary size {n}"),
            )),
        }
    };
    let bos = id_of("tokenizer.ggml.bos_token_id")?;
    let eos = id_of("tokenizer.ggml.eos_token_id")?;
    let pad = id_of("tokenizer.ggml.padding_token_id")?;
    let unk = id_of("tokenizer.ggml.unknown_token_id")?;
    let add_bos = g.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let add_eos = g.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);

    let post_processor = if add_bos || add_eos {
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut specials = Map::new();
        let mut push_special = |seq: &mut Vec<Value>, which: Option<(u64, &str)>, type_id: u32| {
            if let Some((id, tok)) = which {
                seq.push(json!({"SpecialToken": {"id": tok, "type_id": type_id}}));
                specials.insert(
                    tok.to_string(),
                    json!({"id": tok, "ids": [id], "tokens": [tok]}),
                );
            }
        };
        let (b, e) = (
            if add_bos { bos } else { None },
            if add_eos { eos } else { None },
        );
        push_special(&mut single, b, 0);
        single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        push_special(&mut single, e, 0);
        push_special(&mut pair, b, 0);
        pair.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        push_special(&mut pair, e, 0);
        push_special(&mut pair, b, 1);
        pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
        push_special(&mut pair, e, 1);
        json!({"type": "Sequence", "processors": [
            byte_level(false),
            {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}
        ]})
    } else {
        byte_level(false)
    };

    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": byte_level(true),
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk.map(|u| u.1),
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": kind == PreKind::Llama3,
            "vocab": vocab,
            "merges": merge_pairs,
        }
    });

    let arch = g.opt_str("general.architecture")?.unwrap_or("");
    let mut cfg: BTreeMap<&str, Value> = BTreeMap::new();
    cfg.insert("add_bos_token", json!(add_bos));
    cfg.insert("add_eos_token", json!(add_eos));
    cfg.insert("add_prefix_space", json!(false));
    cfg.insert("added_tokens_decoder", Value::Object(added_decoder));
    cfg.insert("bos_token", json!(bos.map(|t| t.1)));
    cfg.insert("eos_token", json!(eos.map(|t| t.1)));
    cfg.insert("pad_token", json!(pad.map(|t| t.1)));
    cfg.insert("unk_token", json!(unk.map(|t| t.1)));
    if let Some(t) = g.opt_str("tokenizer.chat_template")? {
        cfg.insert("chat_template", json!(t));
    }
    cfg.insert("clean_up_tokenization_spaces", json!(false));
    cfg.insert("errors", json!("replace"));
    cfg.insert("model_max_length", json!(context_length));
    cfg.insert("split_special_tokens", json!(false));
    cfg.insert(
        "tokenizer_class",
        json!(if arch == "qwen2" {
            "Qwen2Tokenizer"
        } else {
            "PreTrainedTokenizerFast"
        }),
    );
    let tokenizer_config_json =
        Value::Object(cfg.into_iter().map(|(k, v)| (k.to_string(), v)).collect());

    Ok(TokenizerFiles {
        tokenizer_json,
        tokenizer_config_json,
        vocab_size: n,
        added_special,
        added_non_special,
        duplicate_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet() {
        let t = bytes_to_unicode();
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[b' ' as usize], 'Ġ'); // U+0120: 33rd non-printable byte
        assert_eq!(t[b'\n' as usize], 'Ċ'); // U+010A
        assert_eq!(t[0], '\u{100}');
        assert_eq!(t[0xAD], 'Ń'); // U+0143, the last of the 68 remapped bytes
        let set: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
    }
}
