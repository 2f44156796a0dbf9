//! Checkpoints on disk: config, architecture description, tensor access, model resolution.

pub mod arch;
pub mod checkpoint;
pub mod config;
pub mod hub;
pub mod synth;

pub use arch::{Arch, ArchKind, InputGroup, LinearKind, LinearSpec, TensorSpec};
pub use checkpoint::{Checkpoint, TensorView};
pub use config::ModelConfig;
