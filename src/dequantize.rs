//! `hy-quant dequantize`: turn a GPTQ v1 checkpoint back into a plain full-precision one (in
//! the dtype of its scales). Lets any tool that reads ordinary checkpoints (transformers, a
//! diff script) see exactly the weights a GPTQ loader reconstructs.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::dtype::{self, DType};
use crate::error::{Error, Result};
use crate::export::gptq_v1;
use crate::io::st_writer::index_json;
use crate::io::staged_dir::write_file;
use crate::io::{plan_shards, PlannedTensor, ShardWriter, StagedDir};
use crate::model::checkpoint::INDEX_FILE;
use crate::model::Checkpoint;
use crate::progress::Progress;
use crate::quant::QuantScheme;

/// The GPTQ scheme a quantized checkpoint declares in `quantization_config`.
pub fn declared_scheme(ckpt: &Checkpoint) -> Result<QuantScheme> {
    let path = &ckpt.config.path;
    let qc =
        ckpt.config.raw.get("quantization_config").ok_or_else(|| {
            Error::config(path, "no quantization_config: not a quantized checkpoint")
        })?;
    if qc.get("quant_method").and_then(Value::as_str) != Some("gptq") {
        return Err(Error::config(
            path,
            "quantization_config.quant_method is not \"gptq\"",
        ));
    }
    let bits = qc.get("bits").and_then(Value::as_u64).unwrap_or(0) as u8;
    let group_size = qc.get("group_size").and_then(Value::as_i64).unwrap_or(0);
    let sym = qc.get("sym").and_then(Value::as_bool).unwrap_or(true);
    QuantScheme::new(bits, group_size, sym)
        .map_err(|e| Error::config(path, format!("quantization_config: {e}")))
}

/// Dequantizes the linear stored under `prefix` (`.qweight/.qzeros/.scales/.g_idx`) to f32
/// [out, in], plus the scales' dtype.
pub fn dequantize_linear(
    ckpt: &Checkpoint,
    scheme: &QuantScheme,
    prefix: &str,
) -> Result<(Vec<f32>, usize, usize, DType)> {
    let qweight = ckpt.tensor(&format!("{prefix}.qweight"))?;
    let qzeros = ckpt.tensor(&format!("{prefix}.qzeros"))?;
    let scales = ckpt.tensor(&format!("{prefix}.scales"))?;
    let g_idx = ckpt.tensor(&format!("{prefix}.g_idx"))?;
    for t in [&qweight, &qzeros, &g_idx] {
        if t.info.dtype != Some(DType::I32) {
            return Err(Error::tensor(
                t.name,
                format!("dtype {}, expected I32", t.info.dtype_name),
            ));
        }
    }
    if qweight.info.shape.len() != 2 {
        return Err(Error::tensor(qweight.name, "expected a 2-D tensor"));
    }
    let in_features = qweight.info.shape[0] * scheme.pack_factor();
    let out_features = qweight.info.shape[1];
    let scale_dtype = scales.float_dtype()?;
    let ints = |b: &[u8]| -> Vec<i32> {
        b.chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let ql = gptq_v1::unpack(
        prefix,
        scheme,
        &ints(qweight.bytes),
        &ints(qzeros.bytes),
        &dtype::to_f32(scale_dtype, scales.bytes),
        &ints(g_idx.bytes),
        out_features,
        in_features,
    )?;
    Ok((ql.dequantize(), out_features, in_features, scale_dtype))
}

pub fn dequantize(
    model: &Path,
    out: &Path,
    force: bool,
    progress: &dyn Progress,
) -> Result<PathBuf> {
    let ckpt = Checkpoint::open(model)?;
    let scheme = declared_scheme(&ckpt)?;
    let staged = StagedDir::prepare(out, force, &[model])?;
    let mut planned = Vec::new();
    // (output name, Some(prefix) to dequantize | None to copy)
    let mut sources: Vec<(String, Option<String>)> = Vec::new();
    for name in ckpt.tensor_names() {
        if let Some(prefix) = name.strip_suffix(".qweight") {
            let scales = ckpt.tensor(&format!("{prefix}.scales"))?;
            let dt = scales.float_dtype()?;
            let info = ckpt.info(name).expect("listed");
            let (k, n) = (info.shape[0] * scheme.pack_factor(), info.shape[1]);
            planned.push(PlannedTensor {
                name: format!("{prefix}.weight"),
                dtype: dt.st_name().into(),
                shape: vec![n, k],
                nbytes: n * k * dt.size(),
            });
            sources.push((format!("{prefix}.weight"), Some(prefix.to_string())));
        } else if [".qzeros", ".scales", ".g_idx"]
            .iter()
            .any(|s| name.ends_with(s))
            && ckpt.contains(&format!(
                "{}.qweight",
                name.rsplit_once('.').map(|p| p.0).unwrap_or("")
            ))
        {
            continue;
        } else {
            let info = ckpt.info(name).expect("listed");
            planned.push(PlannedTensor {
                name: name.to_string(),
                dtype: info.dtype_name.clone(),
                shape: info.shape.clone(),
                nbytes: info.end - info.start,
            });
            sources.push((name.to_string(), None));
        }
    }
    let shards = plan_shards(planned, 5_000_000_000, !ckpt.sharded);
    progress.begin("dequantize", sources.len() as u64, ckpt.weight_bytes());
    let mut src = sources.iter();
    for plan in &shards {
        let mut w = ShardWriter::create(staged.path(), plan.clone())?;
        for t in &plan.tensors {
            let (name, prefix) = src.next().expect("plans cover the sources in order");
            match prefix {
                Some(p) => {
                    let (values, _, _, dt) = dequantize_linear(&ckpt, &scheme, p)?;
                    w.write(name, &dtype::from_f32(dt, &values))?;
                }
                None => w.write(name, ckpt.tensor(name)?.bytes)?,
            }
            progress.step(t.nbytes as u64, name);
        }
        w.finish()?;
    }
    progress.end();
    let mut config = ckpt.config.raw.clone();
    config.remove("quantization_config");
    let mut bytes = serde_json::to_vec_pretty(&Value::Object(config)).expect("serializes");
    bytes.push(b'\n');
    write_file(&staged.path().join("config.json"), &bytes)?;
    if ckpt.sharded {
        let mut idx = serde_json::to_vec_pretty(&index_json(&shards)).expect("serializes");
        idx.push(b'\n');
        write_file(&staged.path().join(INDEX_FILE), &idx)?;
    }
    for f in ckpt.companion_files()? {
        let dst = staged.path().join(f.file_name().expect("named"));
        std::fs::copy(&f, &dst).map_err(|e| Error::io(&dst, e))?;
    }
    staged.commit()
}
