//! GGUF input: parse llama.cpp's GGUF container, dequantize its tensors, and map its metadata,
//! tensor names and tokenizer onto a Hugging Face checkpoint layout.
//!
//! Format facts come from ggml's `docs/gguf.md`, `ggml/include/ggml.h`, `ggml/src/ggml-common.h`
//! and `ggml/src/ggml-quants.c`; the code here is a reimplementation, not a copy.

pub mod config;
pub mod dequant;
pub mod names;
pub mod reader;
pub mod tokenizer;

pub use dequant::{dequantize, DequantError};
pub use reader::{GgmlType, GgufError, GgufFile, MetaValue, TensorInfo};
