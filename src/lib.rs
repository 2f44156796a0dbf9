//! hy-quant: offline GPTQ/AWQ/RTN quantization of translation LLMs (HY-MT, Llama, Qwen2) and
//! honest measurement of what it costs.
//!
//! Data flows one way (see DESIGN.md): `model` (checkpoint on disk, architecture) ->
//! `quant` (methods, layer-streaming pipeline) -> `export` (file formats) -> `io` (staged,
//! hashed output) + `manifest`; `eval` scores translations.

pub mod backend;
pub mod calib;
pub mod convert;
pub mod dequantize;
pub mod dtype;
pub mod error;
pub mod eval;
pub mod export;
pub mod gguf;
pub mod inspect;
pub mod io;
pub mod manifest;
pub mod model;
pub mod progress;
pub mod quant;
pub mod rng;
pub mod runner;

pub use error::{Error, Result};
