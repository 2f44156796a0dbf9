//! Writing outputs safely: staged output directories, streaming safetensors shards, hashes.

pub mod digest;
pub mod st_writer;
pub mod staged_dir;

pub use digest::{sha256_file, FileDigest};
pub use st_writer::{plan_shards, PlannedTensor, ShardPlan, ShardWriter};
pub use staged_dir::StagedDir;
