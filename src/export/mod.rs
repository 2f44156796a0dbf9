//! On-disk formats for quantized linears. GPTQ v1 first; AWQ GEMM and compressed-tensors
//! join here as siblings.

pub mod gptq_v1;
