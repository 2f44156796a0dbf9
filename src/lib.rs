//! hy-quant: offline quantization of translation LLMs.
pub mod convert;
pub mod gguf;
