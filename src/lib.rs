//! hy-quant: offline quantization of translation LLMs.
pub mod eval;
