//! Translation-quality evaluation.
//!
//! * [`metrics`]: sacrebleu-compatible corpus/sentence BLEU and chrF/chrF++,
//!   plus paired bootstrap resampling.

pub mod memory;
pub mod metrics;
pub mod reuse;
pub mod run;
pub mod testset;
