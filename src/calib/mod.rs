//! Calibration data for GPTQ: the corpus on disk (`corpus`) and the packed, tokenized batch
//! the layer-by-layer pipeline runs (`sampler`).

pub mod corpus;
pub mod sampler;

pub use corpus::{Corpus, Record};
pub use sampler::{build, CalibOptions, CalibSet, Renderer};
