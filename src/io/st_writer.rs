//! Streaming safetensors writer. The layout of every shard is planned before any weight is
//! computed (hy-quant knows every output shape up front), so the header can be written first
//! and tensors streamed to disk as the quantizer produces them, hashing on the way. Memory
//! stays at one layer, whatever the model size.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::io::digest::FileDigest;

/// One tensor of the output, in the order it will be produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedTensor {
    pub name: String,
    /// safetensors dtype spelling ("I32", "BF16", ...).
    pub dtype: String,
    pub shape: Vec<usize>,
    pub nbytes: usize,
}

/// The tensors of one output file, in write order.
#[derive(Clone, Debug)]
pub struct ShardPlan {
    pub file_name: String,
    pub tensors: Vec<PlannedTensor>,
}

impl ShardPlan {
    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.nbytes as u64).sum()
    }
}

/// Cuts the ordered tensor list into shards of at most `max_shard_bytes` of data (a single
/// tensor larger than that gets a shard of its own). `single_file` names the lone shard
/// `model.safetensors`; otherwise shards are `model-0000i-of-0000n.safetensors`.
pub fn plan_shards(
    tensors: Vec<PlannedTensor>,
    max_shard_bytes: u64,
    single_file: bool,
) -> Vec<ShardPlan> {
    let mut groups: Vec<Vec<PlannedTensor>> = Vec::new();
    let mut size = 0u64;
    for t in tensors {
        let start_new = match groups.last() {
            None => true,
            Some(_) if single_file => false,
            Some(g) => !g.is_empty() && size + t.nbytes as u64 > max_shard_bytes,
        };
        if start_new {
            groups.push(Vec::new());
            size = 0;
        }
        size += t.nbytes as u64;
        groups.last_mut().expect("a group exists").push(t);
    }
    let n = groups.len();
    groups
        .into_iter()
        .enumerate()
        .map(|(i, tensors)| ShardPlan {
            file_name: if single_file {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
            },
            tensors,
        })
        .collect()
}

/// `model.safetensors.index.json` for a set of shards.
pub fn index_json(shards: &[ShardPlan]) -> Value {
    let total: u64 = shards.iter().map(ShardPlan::data_bytes).sum();
    let mut weight_map: Vec<(&str, &str)> = shards
        .iter()
        .flat_map(|s| {
            s.tensors
                .iter()
                .map(move |t| (t.name.as_str(), s.file_name.as_str()))
        })
        .collect();
    weight_map.sort();
    let map: Map<String, Value> = weight_map
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    json!({ "metadata": { "total_size": total }, "weight_map": map })
}

/// Writes one planned shard, tensor by tensor, in plan order.
pub struct ShardWriter {
    path: PathBuf,
    plan: ShardPlan,
    next: usize,
    out: BufWriter<File>,
    hasher: Sha256,
    written: u64,
}

impl ShardWriter {
    pub fn create(dir: &Path, plan: ShardPlan) -> Result<Self> {
        let path = dir.join(&plan.file_name);
        let mut header = Map::new();
        header.insert("__metadata__".into(), json!({ "format": "pt" }));
        let mut offset = 0usize;
        for t in &plan.tensors {
            header.insert(
                t.name.clone(),
                json!({ "dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.nbytes] }),
            );
            offset += t.nbytes;
        }
        let mut bytes = serde_json::to_vec(&Value::Object(header)).map_err(|e| Error::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        // The data section starts 8-aligned (safetensors pads the header with spaces).
        while bytes.len() % 8 != 0 {
            bytes.push(b' ');
        }
        let file = File::create(&path).at(&path)?;
        let mut w = ShardWriter {
            path,
            plan,
            next: 0,
            out: BufWriter::with_capacity(8 << 20, file),
            hasher: Sha256::new(),
            written: 0,
        };
        w.put(&(bytes.len() as u64).to_le_bytes())?;
        w.put(&bytes)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).at(&self.path)?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// True once every planned tensor was written.
    pub fn is_full(&self) -> bool {
        self.next == self.plan.tensors.len()
    }

    /// Name of the tensor the writer expects next.
    pub fn expects(&self) -> Option<&str> {
        self.plan.tensors.get(self.next).map(|t| t.name.as_str())
    }

    /// Writes the next tensor; its name and size must match the plan.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let Some(want) = self.plan.tensors.get(self.next) else {
            return Err(Error::tensor(
                name,
                format!("not planned for {}", self.path.display()),
            ));
        };
        if want.name != name || want.nbytes != bytes.len() {
            return Err(Error::tensor(
                name,
                format!(
                    "internal: expected {} ({} bytes) next in {}, got {} bytes",
                    want.name,
                    want.nbytes,
                    self.path.display(),
                    bytes.len()
                ),
            ));
        }
        self.put(bytes)?;
        self.next += 1;
        Ok(())
    }

    /// Flushes, fsyncs and returns the file's digest. Fails if a planned tensor is missing.
    pub fn finish(mut self) -> Result<FileDigest> {
        if let Some(missing) = self.expects() {
            return Err(Error::tensor(
                missing,
                format!("internal: never written to {}", self.path.display()),
            ));
        }
        self.out.flush().at(&self.path)?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        file.sync_all().at(&self.path)?;
        Ok(FileDigest {
            path: self.plan.file_name.clone(),
            bytes: self.written,
            sha256: hex::encode(self.hasher.finalize()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, nbytes: usize) -> PlannedTensor {
        PlannedTensor {
            name: name.into(),
            dtype: "U8".into(),
            shape: vec![nbytes],
            nbytes,
        }
    }

    #[test]
    fn shards_respect_the_size_limit_and_keep_order() {
        let plan = plan_shards(vec![t("a", 6), t("b", 5), t("c", 20), t("d", 1)], 10, false);
        let names: Vec<Vec<&str>> = plan
            .iter()
            .map(|s| s.tensors.iter().map(|t| t.name.as_str()).collect())
            .collect();
        assert_eq!(names, vec![vec!["a"], vec!["b"], vec!["c"], vec!["d"]]);
        assert_eq!(plan[0].file_name, "model-00001-of-00004.safetensors");
        let single = plan_shards(vec![t("a", 6), t("b", 5)], 1, true);
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].file_name, "model.safetensors");
    }

    #[test]
    fn written_file_is_valid_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan_shards(vec![t("x", 3), t("y", 5)], 100, true).remove(0);
        let mut w = ShardWriter::create(dir.path(), plan).unwrap();
        assert!(
            w.write("y", &[0; 5]).is_err(),
            "out-of-order write must fail"
        );
        w.write("x", &[1, 2, 3]).unwrap();
        w.write("y", &[4, 5, 6, 7, 8]).unwrap();
        let digest = w.finish().unwrap();
        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        assert_eq!(digest.bytes, bytes.len() as u64);
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("y").unwrap().data(), &[4, 5, 6, 7, 8]);
        assert_eq!(
            (8 + u64::from_le_bytes(bytes[..8].try_into().unwrap())) % 8,
            0
        );
    }

    #[test]
    fn unfinished_shard_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan_shards(vec![t("x", 3), t("y", 5)], 100, true).remove(0);
        let mut w = ShardWriter::create(dir.path(), plan).unwrap();
        w.write("x", &[1, 2, 3]).unwrap();
        assert!(w.finish().unwrap_err().to_string().contains("y"));
    }
}
