//! Chat templates and translation prompts.
//!
//! There is no Jinja engine here: the template family is recognised from
//! `tokenizer_config.json`'s `chat_template` (or, without one, from the special tokens the
//! tokenizer knows and the architecture) and rendered by hand for a single user turn with the
//! generation prompt, the way transformers' `apply_chat_template(add_generation_prompt=True)`
//! renders it:
//! - ChatML (Qwen2): `<|im_start|>system\n{sys}<|im_end|>\n<|im_start|>user\n{msg}<|im_end|>\n<|im_start|>assistant\n`.
//!   Qwen2.5's template inserts "You are Qwen, created by Alibaba Cloud. You are a helpful
//!   assistant." when the conversation has no system message. We keep it exactly when the
//!   model's own template does: it is what the model was tuned with and what transformers and
//!   vLLM's chat endpoint send for a bare user message, so our prompts (and BLEU) match theirs
//!   token for token. Without a `chat_template` we use no system message.
//! - HunYuan (HY-MT): `<｜hy_begin▁of▁sentence｜><｜hy_User｜>{msg}<｜hy_Assistant｜>`, the
//!   spelling in Tencent's template (fullwidth bars U+FF5C, U+2581 between words); no system
//!   message (Tencent's translation prompts carry none).
//! - Llama 3: `<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{msg}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n`.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, IoContext, Result};
use crate::model::arch::ArchKind;
use crate::runner::tokenizer::TextTokenizer;

pub const QWEN_DEFAULT_SYSTEM: &str =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
pub const HY_BOS: &str = "<｜hy_begin▁of▁sentence｜>";
pub const HY_USER: &str = "<｜hy_User｜>";
pub const HY_ASSISTANT: &str = "<｜hy_Assistant｜>";

/// A chat template family, rendered for one user turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatTemplate {
    ChatMl { system: Option<String> },
    Hunyuan,
    Llama3,
}

impl ChatTemplate {
    /// Picks the family from `dir/tokenizer_config.json`'s `chat_template`, else from the
    /// tokenizer's special tokens, else from the architecture.
    pub fn detect(dir: &Path, kind: ArchKind, tok: Option<&TextTokenizer>) -> Result<Self> {
        let cfg_path = dir.join("tokenizer_config.json");
        let template = if cfg_path.is_file() {
            let text = std::fs::read_to_string(&cfg_path).at(&cfg_path)?;
            let v: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
                path: cfg_path.clone(),
                source,
            })?;
            match v.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: take "default".
                Some(Value::Array(a)) => a
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(String::from),
                _ => None,
            }
        } else {
            None
        };
        if let Some(t) = template {
            if t.contains("hy_User") {
                return Ok(ChatTemplate::Hunyuan);
            }
            if t.contains("<|im_start|>") {
                let system = t
                    .contains(QWEN_DEFAULT_SYSTEM)
                    .then(|| QWEN_DEFAULT_SYSTEM.to_string());
                return Ok(ChatTemplate::ChatMl { system });
            }
            if t.contains("<|start_header_id|>") {
                return Ok(ChatTemplate::Llama3);
            }
            return Err(Error::config(
                &cfg_path,
                "chat_template is of a family the runner does not know (expected ChatML, HunYuan or Llama 3)",
            ));
        }
        let has = |s: &str| tok.and_then(|t| t.token_id(s)).is_some();
        if kind == ArchKind::HunyuanDense || has(HY_USER) {
            Ok(ChatTemplate::Hunyuan)
        } else if has("<|im_start|>") {
            Ok(ChatTemplate::ChatMl { system: None })
        } else if has("<|start_header_id|>") {
            Ok(ChatTemplate::Llama3)
        } else if kind == ArchKind::Qwen2 {
            Ok(ChatTemplate::ChatMl { system: None })
        } else {
            Err(Error::config(
                &cfg_path,
                "no chat_template and the tokenizer has none of <|im_start|>, <｜hy_User｜>, <|start_header_id|>",
            ))
        }
    }

    /// The prompt text for one user message, ending where the assistant's reply starts.
    pub fn render(&self, user: &str) -> String {
        match self {
            ChatTemplate::ChatMl { system } => {
                let mut s = String::new();
                if let Some(sys) = system {
                    s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
                }
                s.push_str(&format!(
                    "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
                ));
                s
            }
            ChatTemplate::Hunyuan => format!("{HY_BOS}{HY_USER}{user}{HY_ASSISTANT}"),
            ChatTemplate::Llama3 => format!(
                "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>\
                 <|start_header_id|>assistant<|end_header_id|>\n\n"
            ),
        }
    }
}

/// Languages of the Hunyuan-MT / HY-MT1.5 model card table: (code, English name, Chinese name).
/// The Chinese names go into the Chinese prompt, the English names into the English one.
pub const LANGUAGES: &[(&str, &str, &str)] = &[
    ("zh", "Chinese", "中文"),
    ("en", "English", "英语"),
    ("fr", "French", "法语"),
    ("pt", "Portuguese", "葡萄牙语"),
    ("es", "Spanish", "西班牙语"),
    ("ja", "Japanese", "日语"),
    ("tr", "Turkish", "土耳其语"),
    ("ru", "Russian", "俄语"),
    ("ar", "Arabic", "阿拉伯语"),
    ("ko", "Korean", "韩语"),
    ("th", "Thai", "泰语"),
    ("it", "Italian", "意大利语"),
    ("de", "German", "德语"),
    ("vi", "Vietnamese", "越南语"),
    ("ms", "Malay", "马来语"),
    ("id", "Indonesian", "印尼语"),
    ("tl", "Filipino", "菲律宾语"),
    ("hi", "Hindi", "印地语"),
    ("zh-Hant", "Traditional Chinese", "繁体中文"),
    ("pl", "Polish", "波兰语"),
    ("cs", "Czech", "捷克语"),
    ("nl", "Dutch", "荷兰语"),
    ("km", "Khmer", "高棉语"),
    ("my", "Burmese", "缅甸语"),
    ("fa", "Persian", "波斯语"),
    ("gu", "Gujarati", "古吉拉特语"),
    ("ur", "Urdu", "乌尔都语"),
    ("te", "Telugu", "泰卢固语"),
    ("mr", "Marathi", "马拉地语"),
    ("he", "Hebrew", "希伯来语"),
    ("bn", "Bengali", "孟加拉语"),
    ("ta", "Tamil", "泰米尔语"),
    ("uk", "Ukrainian", "乌克兰语"),
    ("bo", "Tibetan", "藏语"),
    ("kk", "Kazakh", "哈萨克语"),
    ("mn", "Mongolian", "蒙古语"),
    ("ug", "Uyghur", "维吾尔语"),
    ("yue", "Cantonese", "粤语"),
];

fn lookup(code: &str) -> Result<&'static (&'static str, &'static str, &'static str)> {
    LANGUAGES
        .iter()
        .find(|(c, _, _)| c.eq_ignore_ascii_case(code))
        .ok_or_else(|| {
            let known: Vec<&str> = LANGUAGES.iter().map(|l| l.0).collect();
            Error::flag(
                "--to/--from",
                format!(
                    "unknown language code {code:?}; known: {}",
                    known.join(", ")
                ),
            )
        })
}

fn is_chinese(code: &str) -> bool {
    matches!(code, "zh" | "zh-Hant" | "yue") || code.eq_ignore_ascii_case("zh-hant")
}

/// Guesses the source language: "zh" when the text has CJK ideographs, else "en".
pub fn guess_source(text: &str) -> &'static str {
    if text
        .chars()
        .any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c) || ('\u{3400}'..='\u{4dbf}').contains(&c))
    {
        "zh"
    } else {
        "en"
    }
}

/// Tencent's recommended prompt (../shared/models.md): the Chinese one when either side is
/// Chinese (target named in Chinese, e.g. 英语 / 中文), the English one otherwise (target named
/// in English).
pub fn translation_instruction(
    source_text: &str,
    source_lang: Option<&str>,
    target_lang: &str,
) -> Result<String> {
    let src = match source_lang {
        Some(s) => lookup(s)?.0,
        None => guess_source(source_text),
    };
    let (tgt, tgt_en, tgt_zh) = *lookup(target_lang)?;
    Ok(if is_chinese(src) || is_chinese(tgt) {
        format!(
            "将以下文本翻译为{tgt_zh}，注意只需要输出翻译后的结果，不要额外解释：\n\n{source_text}"
        )
    } else {
        format!("Translate the following segment into {tgt_en}, without additional explanation.\n\n{source_text}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_with_and_without_system() {
        let t = ChatTemplate::ChatMl {
            system: Some(QWEN_DEFAULT_SYSTEM.into()),
        };
        assert_eq!(
            t.render("hi"),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        let t = ChatTemplate::ChatMl { system: None };
        assert_eq!(
            t.render("hi"),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn hunyuan_template_spelling() {
        let s = ChatTemplate::Hunyuan.render("x");
        assert_eq!(
            s,
            "<\u{ff5c}hy_begin\u{2581}of\u{2581}sentence\u{ff5c}><\u{ff5c}hy_User\u{ff5c}>x<\u{ff5c}hy_Assistant\u{ff5c}>"
        );
    }

    #[test]
    fn prompts_per_direction() {
        assert_eq!(
            translation_instruction("他偏爱红色。", None, "en").unwrap(),
            "将以下文本翻译为英语，注意只需要输出翻译后的结果，不要额外解释：\n\n他偏爱红色。"
        );
        assert_eq!(
            translation_instruction("save the log", Some("en"), "zh").unwrap(),
            "将以下文本翻译为中文，注意只需要输出翻译后的结果，不要额外解释：\n\nsave the log"
        );
        assert_eq!(
            translation_instruction("Guten Tag", Some("de"), "en").unwrap(),
            "Translate the following segment into English, without additional explanation.\n\nGuten Tag"
        );
        assert!(translation_instruction("x", None, "xx").is_err());
    }

    #[test]
    fn detects_family_from_chat_template() {
        let dir = tempfile::tempdir().unwrap();
        let write = |t: &str| {
            std::fs::write(
                dir.path().join("tokenizer_config.json"),
                serde_json::to_string(&serde_json::json!({ "chat_template": t })).unwrap(),
            )
            .unwrap()
        };
        write("{{'<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>'}}");
        assert_eq!(
            ChatTemplate::detect(dir.path(), ArchKind::Qwen2, None).unwrap(),
            ChatTemplate::ChatMl {
                system: Some(QWEN_DEFAULT_SYSTEM.into())
            }
        );
        write("{{ '<|im_start|>' + role }}");
        assert_eq!(
            ChatTemplate::detect(dir.path(), ArchKind::Qwen2, None).unwrap(),
            ChatTemplate::ChatMl { system: None }
        );
        write("<｜hy_begin▁of▁sentence｜>{% for m in messages %}<｜hy_User｜>{% endfor %}");
        assert_eq!(
            ChatTemplate::detect(dir.path(), ArchKind::Qwen2, None).unwrap(),
            ChatTemplate::Hunyuan
        );
        std::fs::remove_file(dir.path().join("tokenizer_config.json")).unwrap();
        assert_eq!(
            ChatTemplate::detect(dir.path(), ArchKind::HunyuanDense, None).unwrap(),
            ChatTemplate::Hunyuan
        );
    }
}
