//! `eval --resume`: hypotheses written by an earlier run are reused when they were produced
//! from the same model files, test set (content and number of segments), languages, decoding
//! settings and device. Each hypothesis file `hyp/LABEL.SET.txt` gets a sidecar
//! `hyp/LABEL.SET.json` with that key; each model a `hyp/LABEL.model.json` with its memory
//! figures, so a model whose sets are all done is not even loaded again.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::eval::run::EvalOptions;
use crate::eval::testset::TestSet;
use crate::io::sha256_file;
use crate::io::staged_dir::write_file;
use crate::model::Checkpoint;
use crate::runner::translator::VramReport;

/// What a reusable set holds.
#[derive(Clone, Debug)]
pub struct SetOutputs {
    pub hyps: Vec<String>,
    pub tokens: usize,
}

#[derive(Serialize, Deserialize)]
struct SetSidecar {
    key: Value,
    tokens: usize,
    seconds: f64,
}

/// Memory figures of a model's run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelStats {
    pub weight_bytes_resident: u64,
    pub peak_rss_bytes: Option<u64>,
    pub vram: Option<VramReport>,
}

#[derive(Serialize, Deserialize)]
struct ModelSidecar {
    key: Value,
    stats: ModelStats,
}

fn set_name(set: &TestSet) -> String {
    set.path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `hyp/LABEL.SET.txt`, relative to the output directory.
pub fn hyp_file(label: &str, set: &TestSet) -> String {
    format!("hyp/{label}.{}.txt", set_name(set))
}

fn set_sidecar(label: &str, set: &TestSet) -> String {
    format!("hyp/{label}.{}.json", set_name(set))
}

fn model_sidecar(label: &str) -> String {
    format!("hyp/{label}.model.json")
}

/// Everything about a model's run that changes its outputs.
pub fn model_key(dir: &Path, device: &str, opts: &EvalOptions) -> Result<Value> {
    let ckpt = Checkpoint::open(dir)?;
    Ok(json!({
        "tool": format!("hy-quant {}", env!("CARGO_PKG_VERSION")),
        "model": std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
        "identity": ckpt.identity()?,
        "device": device,
        "max_new_tokens": opts.max_new_tokens,
        "batch": opts.batch,
    }))
}

pub fn set_key(model_key: &Value, set: &TestSet, src: &str, tgt: &str) -> Result<Value> {
    Ok(json!({
        "model": model_key,
        "testset_sha256": sha256_file(&set.path)?.1,
        "segments": set.pairs.len(),
        "src": src,
        "tgt": tgt,
    }))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The stored hypotheses of `set`, when their key matches and the file is complete.
pub fn load_set(out: &Path, label: &str, set: &TestSet, key: &Value) -> Option<SetOutputs> {
    let side: SetSidecar = read_json(&out.join(set_sidecar(label, set)))?;
    if &side.key != key {
        return None;
    }
    let text = std::fs::read_to_string(out.join(hyp_file(label, set))).ok()?;
    let hyps: Vec<String> = text.lines().map(str::to_string).collect();
    (hyps.len() == set.pairs.len()).then_some(SetOutputs {
        hyps,
        tokens: side.tokens,
    })
}

/// Seconds the stored run of `set` took (0 when unknown).
pub fn seconds_of(out: &Path, label: &str, set: &TestSet) -> f64 {
    read_json::<SetSidecar>(&out.join(set_sidecar(label, set))).map_or(0.0, |s| s.seconds)
}

/// Records the key of a hypothesis file just written.
pub fn save_set(
    out: &Path,
    label: &str,
    set: &TestSet,
    key: &Value,
    tokens: usize,
    seconds: f64,
) -> Result<()> {
    let side = SetSidecar {
        key: key.clone(),
        tokens,
        seconds,
    };
    let bytes = serde_json::to_vec_pretty(&side).map_err(|e| Error::Eval { msg: e.to_string() })?;
    write_file(&out.join(set_sidecar(label, set)), &bytes)
}

pub fn load_model(out: &Path, label: &str, key: &Value) -> Option<ModelStats> {
    let side: ModelSidecar = read_json(&out.join(model_sidecar(label)))?;
    (&side.key == key).then_some(side.stats)
}

pub fn save_model(out: &Path, label: &str, key: &Value, stats: &ModelStats) -> Result<()> {
    let side = ModelSidecar {
        key: key.clone(),
        stats: stats.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&side).map_err(|e| Error::Eval { msg: e.to_string() })?;
    write_file(&out.join(model_sidecar(label)), &bytes)
}
