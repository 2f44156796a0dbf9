//! `manifest.json`: what produced an output directory and how to check it is intact.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::io::{sha256_file, FileDigest};
use crate::quant::grid::GridFit;
use crate::quant::stats::ErrorStats;

pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Always "hy-quant": how `--out` recognises a directory it may replace.
    pub tool: String,
    pub version: String,
    /// argv of the run that wrote this directory.
    pub command: Vec<String>,
    pub method: String,
    pub bits: u8,
    pub group_size: i64,
    pub sym: bool,
    pub format: String,
    pub input_dir: PathBuf,
    pub inputs: Vec<FileDigest>,
    pub outputs: Vec<FileDigest>,
    pub tensors: Vec<TensorRecord>,
    /// Seconds per phase, in the order the phases ran.
    pub phases: Vec<PhaseTime>,
    pub wall_seconds: f64,
    /// Calibrated methods: the corpus, the batch drawn from it and the solver settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorRecord {
    pub name: String,
    pub shape: Vec<usize>,
    /// Weight-space error against the original.
    #[serde(flatten)]
    pub error: ErrorStats,
    /// Output-space error on the calibration inputs (calibrated methods only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibrated: Option<CalibratedError>,
}

/// How well one linear reproduces its outputs on the calibration inputs X:
/// ||XWᵀ - XQᵀ||_F / ||XWᵀ||_F for this method and, for comparison, for RTN on the same grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibratedError {
    pub output_rel_error: f64,
    pub rtn_output_rel_error: f64,
    /// Relative damping the Cholesky succeeded with (the requested `--damp` unless it had to
    /// be raised).
    pub damp_used: f64,
    /// Failed Cholesky attempts before that (each multiplies the damping by 10).
    pub damp_retries: u32,
}

/// The calibration behind a GPTQ output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CalibrationRecord {
    /// (path as given, sha256) of every corpus file read.
    pub corpus: Vec<(PathBuf, String)>,
    pub samples: usize,
    pub seqlen: usize,
    pub seed: u64,
    /// Records that went into the batch, and how many of them were translation pairs.
    pub documents: usize,
    pub pairs: usize,
    pub damp: f64,
    pub act_order: String,
    /// How group ranges were fitted (min-max, or clip-search with `--clip-search`).
    #[serde(default)]
    pub grid_fit: GridFit,
    /// Layers taken from an interrupted run's progress (0 when the run was not resumed).
    pub resumed_layers: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhaseTime {
    pub phase: String,
    pub seconds: f64,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        if !path.is_file() {
            return Err(Error::Missing {
                path,
                what: "not a hy-quant output directory (no manifest.json)".into(),
            });
        }
        let text = std::fs::read_to_string(&path).at(&path)?;
        serde_json::from_str(&text).map_err(|source| Error::Json { path, source })
    }

    pub fn to_json_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }
}

/// Outcome of `verify`: every problem found, not just the first.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub checked: usize,
    pub problems: Vec<String>,
}

/// Re-hashes every output file listed in the manifest and looks for unlisted files.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    let manifest = Manifest::read(dir)?;
    let mut report = VerifyReport::default();
    for expected in &manifest.outputs {
        let path = dir.join(&expected.path);
        if !path.is_file() {
            report.problems.push(format!("{}: missing", expected.path));
            continue;
        }
        let (bytes, sha) = sha256_file(&path)?;
        report.checked += 1;
        if bytes != expected.bytes {
            report.problems.push(format!(
                "{}: {bytes} bytes, manifest says {}",
                expected.path, expected.bytes
            ));
        } else if sha != expected.sha256 {
            report.problems.push(format!(
                "{}: sha256 {sha}, manifest says {}",
                expected.path, expected.sha256
            ));
        }
    }
    for entry in std::fs::read_dir(dir).at(dir)? {
        let name = entry.at(dir)?.file_name().to_string_lossy().into_owned();
        if name != MANIFEST_FILE && !manifest.outputs.iter().any(|o| o.path == name) {
            report
                .problems
                .push(format!("{name}: not listed in the manifest"));
        }
    }
    Ok(report)
}
