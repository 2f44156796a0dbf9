//! CPU reference runner: loads a full-precision or GPTQ v1 checkpoint, runs the decoder with a
//! KV cache and decodes greedily in batches. It is the yardstick quantized checkpoints are
//! measured against, so it favours plain, checkable numerics (f32 activations, f32
//! accumulation) over speed.
//!
//! - `weights`: linear layers in stored form (bf16/f16/f32 or packed GPTQ), tiled dequant + matmul
//! - `forward`: the decoder (qwen2, llama, hunyuan_v1_dense) and its KV cache
//! - `generate`: batched greedy decoding with continuous batching
//! - `tokenizer`, `prompt`: tokenizer.json, chat templates, Tencent's translation prompts
//! - `translator`: all of it behind `Translator::translate_batch`

pub mod backend_model;
pub mod forward;
pub mod generate;
pub mod prompt;
pub mod tokenizer;
pub mod translator;
pub mod weights;

pub use forward::{KvCache, Model, SeqStep};
pub use generate::{generate, FinishReason, GenerateOptions, GenerateStats, Generation};
pub use prompt::ChatTemplate;
pub use tokenizer::TextTokenizer;
pub use translator::{Output, Prompt, Translator};
pub use weights::Linear;
