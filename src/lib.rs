//! hy-quant: offline quantization of translation LLMs.
