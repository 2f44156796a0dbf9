//! Translation-quality evaluation.
//!
//! * [`metrics`]: sacrebleu-compatible corpus/sentence BLEU and chrF/chrF++,
//!   plus paired bootstrap resampling.

pub mod metrics;
pub mod memory;
pub mod run;
pub mod testset;
