//! `--model` accepts a directory or a Hugging Face repo id (`tencent/HY-MT1.5-7B`). Ids resolve
//! through the hub cache layout (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`: `models--org--name/refs/main` -> `snapshots/<sha>/`), work
//! offline when the snapshot is complete, and download the missing files otherwise (unless
//! `HF_HUB_OFFLINE=1`).

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo};

use crate::error::{Error, Result};
use crate::model::checkpoint::INDEX_FILE;

/// Files a checkpoint needs besides its weight shards.
const WANTED_SUFFIXES: [&str; 6] = [".json", ".safetensors", ".model", ".txt", ".jinja", ".py"];

/// The hub cache hy-quant reads, honouring `HF_HUB_CACHE` then `HF_HOME`.
pub fn hub_cache() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(p) if !p.is_empty() => Cache::new(PathBuf::from(p)),
        _ => Cache::from_env(),
    }
}

/// True for strings shaped like `org/name` that are not an existing path.
pub fn looks_like_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        && !Path::new(s).exists()
}

/// Resolves `--model` to a local directory.
pub fn resolve_model(model: &str) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    if !looks_like_repo_id(model) {
        return Err(Error::Missing {
            path: path.to_path_buf(),
            what: "model directory (or a Hugging Face id like org/name)".into(),
        });
    }
    let cache = hub_cache();
    if let Some(dir) = cached_snapshot(&cache, model) {
        return Ok(dir);
    }
    let offline =
        std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if offline {
        return Err(Error::Hub {
            id: model.into(),
            msg: format!(
                "not in the hub cache at {} (HF_HUB_OFFLINE is set, so nothing is downloaded)",
                cache.path().display()
            ),
        });
    }
    download(cache, model)
}

/// The snapshot directory of `id` when it holds config.json and every shard its index lists.
pub fn cached_snapshot(cache: &Cache, id: &str) -> Option<PathBuf> {
    let repo = cache.repo(Repo::model(id.to_string()));
    let config = repo.get("config.json")?;
    let dir = config.parent()?.to_path_buf();
    let complete = if dir.join(INDEX_FILE).is_file() {
        let text = std::fs::read_to_string(dir.join(INDEX_FILE)).ok()?;
        let index: serde_json::Value = serde_json::from_str(&text).ok()?;
        index
            .get("weight_map")?
            .as_object()?
            .values()
            .filter_map(|f| f.as_str())
            .all(|f| dir.join(f).is_file())
    } else {
        std::fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
    };
    complete.then_some(dir)
}

fn download(cache: Cache, id: &str) -> Result<PathBuf> {
    let hub_err = |msg: String| Error::Hub { id: id.into(), msg };
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache)
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .build()
        .map_err(|e| hub_err(format!("cannot build the hub client: {e}")))?;
    let repo = api.model(id.to_string());
    let info = repo.info().map_err(|e| {
        hub_err(format!(
            "not in the local cache and the hub is unreachable: {e}"
        ))
    })?;
    let mut config = None;
    for sibling in &info.siblings {
        let name = &sibling.rfilename;
        if name.contains('/') || !WANTED_SUFFIXES.iter().any(|s| name.ends_with(s)) {
            continue;
        }
        let local = repo
            .get(name)
            .map_err(|e| hub_err(format!("downloading {name}: {e}")))?;
        if name == "config.json" {
            config = Some(local);
        }
    }
    let config = config.ok_or_else(|| hub_err("the repository has no config.json".into()))?;
    Ok(config
        .parent()
        .expect("snapshot file has a parent")
        .to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_id_shape() {
        assert!(looks_like_repo_id("tencent/HY-MT1.5-7B"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("../x"));
        assert!(!looks_like_repo_id("plain"));
    }
}
