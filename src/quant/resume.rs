//! Progress of a calibrated (GPTQ) run, kept inside `<out>.hyq-partial/resume/` so a run
//! killed at any point can continue from its last finished layer.
//!
//! - `state.json`: the fingerprint of everything that determines the output (tool version,
//!   input files, scheme, solver settings, calibration corpus and sampling). A partial
//!   directory is only continued when the fingerprint is identical.
//! - `layer-NNNNN.safetensors`: the packed GPTQ tensors of one finished layer (output names)
//!   with the manifest records in the metadata. Written to a temporary name, fsynced and
//!   renamed, so a file with the final name is always complete.
//!
//! Continuing needs no snapshot of the calibration activations: they are recomputed by
//! running the calibration batch through the finished layers with their stored quantized
//! weights, which is the same arithmetic the first run did (fixed chunking, no dependence on
//! thread count), so the final files are byte-identical to an uninterrupted run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, IoContext, Result};
use crate::export::gptq_v1::PackedGptq;
use crate::io::staged_dir::write_file;
use crate::manifest::TensorRecord;

pub const RESUME_DIR: &str = "resume";
const STATE_FILE: &str = "state.json";

/// The packed tensors and manifest record of one linear.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearResult {
    /// Module path, e.g. `model.layers.3.self_attn.q_proj`.
    pub prefix: String,
    pub packed: PackedGptq,
    pub record: TensorRecord,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    fingerprint: Value,
}

/// The resume folder of one partial output directory.
pub struct ResumeStore {
    dir: PathBuf,
}

impl ResumeStore {
    /// Opens (`continue_existing`) or starts the store under `partial`. Continuing checks the
    /// fingerprint and fails with the first difference; starting clears old progress.
    pub fn open(partial: &Path, fingerprint: &Value, continue_existing: bool) -> Result<Self> {
        let dir = partial.join(RESUME_DIR);
        let state_path = dir.join(STATE_FILE);
        if continue_existing && state_path.is_file() {
            let text = std::fs::read_to_string(&state_path).at(&state_path)?;
            let state: StateFile = serde_json::from_str(&text).map_err(|source| Error::Json {
                path: state_path.clone(),
                source,
            })?;
            if &state.fingerprint != fingerprint {
                return Err(Error::Resume {
                    path: partial.to_path_buf(),
                    msg: format!(
                        "it was started with different inputs or settings ({}); run the same command, \
                         or drop --resume to start over",
                        first_difference(&state.fingerprint, fingerprint)
                    ),
                });
            }
            return Ok(ResumeStore { dir });
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).at(&dir)?;
        }
        std::fs::create_dir_all(&dir).at(&dir)?;
        let mut bytes = serde_json::to_vec_pretty(&StateFile {
            fingerprint: fingerprint.clone(),
        })
        .expect("state serializes");
        bytes.push(b'\n');
        write_atomic(&state_path, &bytes)?;
        Ok(ResumeStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn layer_path(&self, layer: usize) -> PathBuf {
        self.dir.join(format!("layer-{layer:05}.safetensors"))
    }

    /// Number of consecutive finished layers from layer 0.
    pub fn finished_layers(&self, num_layers: usize) -> usize {
        (0..num_layers)
            .take_while(|&l| self.layer_path(l).is_file())
            .count()
    }

    pub fn save_layer(&self, layer: usize, linears: &[LinearResult]) -> Result<()> {
        use safetensors::tensor::{Dtype, TensorView};
        let i32_bytes = |v: &[i32]| crate::dtype::i32_bytes(v);
        let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for l in linears {
            let p = &l.prefix;
            owned.push((
                format!("{p}.qweight"),
                Dtype::I32,
                vec![l.packed.qweight.len()],
                i32_bytes(&l.packed.qweight),
            ));
            owned.push((
                format!("{p}.qzeros"),
                Dtype::I32,
                vec![l.packed.qzeros.len()],
                i32_bytes(&l.packed.qzeros),
            ));
            owned.push((
                format!("{p}.g_idx"),
                Dtype::I32,
                vec![l.packed.g_idx.len()],
                i32_bytes(&l.packed.g_idx),
            ));
            owned.push((
                format!("{p}.scales"),
                Dtype::U8,
                vec![l.packed.scales.len()],
                l.packed.scales.clone(),
            ));
        }
        let views: Vec<(String, TensorView<'_>)> = owned
            .iter()
            .map(|(n, d, s, b)| {
                (
                    n.clone(),
                    TensorView::new(*d, s.clone(), b).expect("shape matches bytes"),
                )
            })
            .collect();
        let records: Vec<&TensorRecord> = linears.iter().map(|l| &l.record).collect();
        let prefixes: Vec<&str> = linears.iter().map(|l| l.prefix.as_str()).collect();
        let mut meta = HashMap::new();
        meta.insert(
            "records".to_string(),
            serde_json::to_string(&records).expect("records serialize"),
        );
        meta.insert(
            "prefixes".to_string(),
            serde_json::to_string(&prefixes).expect("prefixes serialize"),
        );
        let path = self.layer_path(layer);
        let bytes =
            safetensors::tensor::serialize(views, Some(meta)).map_err(|e| Error::Safetensors {
                path: path.clone(),
                msg: e.to_string(),
            })?;
        write_atomic(&path, &bytes)
    }

    pub fn load_layer(&self, layer: usize) -> Result<Vec<LinearResult>> {
        let path = self.layer_path(layer);
        let bytes = std::fs::read(&path).at(&path)?;
        let corrupt = |msg: String| Error::Resume {
            path: path.clone(),
            msg: format!("progress file is corrupt ({msg}); drop --resume to start over"),
        };
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let info = meta.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            info.get(k)
                .cloned()
                .ok_or_else(|| corrupt(format!("no {k}")))
        };
        let records: Vec<TensorRecord> =
            serde_json::from_str(&get("records")?).map_err(|e| corrupt(e.to_string()))?;
        let prefixes: Vec<String> =
            serde_json::from_str(&get("prefixes")?).map_err(|e| corrupt(e.to_string()))?;
        if records.len() != prefixes.len() {
            return Err(corrupt("records and prefixes differ in number".into()));
        }
        let ints = |name: String| -> Result<Vec<i32>> {
            let t = st
                .tensor(&name)
                .map_err(|e| corrupt(format!("{name}: {e}")))?;
            Ok(t.data()
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        prefixes
            .into_iter()
            .zip(records)
            .map(|(p, record)| {
                let scales = st
                    .tensor(&format!("{p}.scales"))
                    .map_err(|e| corrupt(format!("{p}.scales: {e}")))?
                    .data()
                    .to_vec();
                Ok(LinearResult {
                    packed: PackedGptq {
                        qweight: ints(format!("{p}.qweight"))?,
                        qzeros: ints(format!("{p}.qzeros"))?,
                        scales,
                        g_idx: ints(format!("{p}.g_idx"))?,
                    },
                    prefix: p,
                    record,
                })
            })
            .collect()
    }

    /// Removes the store (the output is about to be committed).
    pub fn remove(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir).at(&self.dir)
    }
}

/// Writes `path` through a temporary file, fsync and rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    write_file(&tmp, bytes)?;
    std::fs::rename(&tmp, path).at(path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .at(dir)?;
    }
    Ok(())
}

/// A short description of where two fingerprints differ.
fn first_difference(old: &Value, new: &Value) -> String {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                match b.get(k) {
                    None => return format!("{k} is gone"),
                    Some(vb) if vb != va => {
                        return format!("{k}: {} then, {} now", short(va), short(vb))
                    }
                    _ => {}
                }
            }
            match b.keys().find(|k| !a.contains_key(*k)) {
                Some(k) => format!("{k} is new"),
                None => "no difference".into(),
            }
        }
        _ => format!("{} then, {} now", short(old), short(new)),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::stats::ErrorStats;

    fn result(prefix: &str, seed: i32) -> LinearResult {
        LinearResult {
            prefix: prefix.into(),
            packed: PackedGptq {
                qweight: vec![seed, -1, 7],
                qzeros: vec![seed * 3],
                scales: vec![1, 2, 3, 4],
                g_idx: vec![0, 0, 1],
            },
            record: TensorRecord {
                name: format!("{prefix}.weight"),
                shape: vec![2, 3],
                error: ErrorStats {
                    rel_fro: 0.5,
                    max_abs: 0.25,
                },
                calibrated: None,
            },
        }
    }

    #[test]
    fn layers_round_trip_and_fingerprint_guards_continuation() {
        let dir = tempfile::tempdir().unwrap();
        let fp = serde_json::json!({"bits": 4, "seed": 1});
        let store = ResumeStore::open(dir.path(), &fp, false).unwrap();
        assert_eq!(store.finished_layers(3), 0);
        let l0 = vec![result("a.q", 1), result("a.k", 2)];
        store.save_layer(0, &l0).unwrap();
        store.save_layer(2, &[result("c.q", 5)]).unwrap();
        // Layer 1 is missing: only layer 0 counts as finished.
        assert_eq!(store.finished_layers(3), 1);
        assert_eq!(store.load_layer(0).unwrap(), l0);

        let again = ResumeStore::open(dir.path(), &fp, true).unwrap();
        assert_eq!(again.finished_layers(3), 1);
        let other = serde_json::json!({"bits": 8, "seed": 1});
        let e = ResumeStore::open(dir.path(), &other, true)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("bits: 4 then, 8 now"), "{e}");
        // Starting fresh clears old progress.
        let fresh = ResumeStore::open(dir.path(), &other, false).unwrap();
        assert_eq!(fresh.finished_layers(3), 0);
    }

    #[test]
    fn a_corrupt_layer_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResumeStore::open(dir.path(), &Value::Null, false).unwrap();
        std::fs::write(store.layer_path(0), b"garbage").unwrap();
        let e = store.load_layer(0).unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("layer-00000"), "{e}");
    }
}
