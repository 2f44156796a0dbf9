//! An output directory that only appears complete when it is: everything is written into
//! `<out>.hyq-partial/`, fsynced, and renamed onto `<out>` as the last step.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

pub const PARTIAL_SUFFIX: &str = ".hyq-partial";
const OLD_SUFFIX: &str = ".hyq-old";

/// A directory being written. Dropping it without `commit` (an error on the way) removes the
/// partial directory and leaves `<out>` untouched.
pub struct StagedDir {
    target: PathBuf,
    partial: PathBuf,
    committed: bool,
    /// Leave the partial directory in place when dropped uncommitted (resumable progress).
    keep: bool,
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed && !self.keep {
            let _ = fs::remove_dir_all(&self.partial);
        }
    }
}

/// True when `dir` holds a manifest written by hy-quant.
pub fn is_ours(dir: &Path) -> bool {
    fs::read_to_string(dir.join("manifest.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v.get("tool")
                .and_then(|t| t.as_str())
                .map(|t| t == "hy-quant")
        })
        .unwrap_or(false)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

impl StagedDir {
    /// Checks `out` may be (re)placed and creates a fresh partial directory beside it.
    /// `inputs` are directories that must never be overwritten (the model being read).
    pub fn prepare(out: &Path, force: bool, inputs: &[&Path]) -> Result<Self> {
        Self::prepare_resumable(out, force, inputs, false)
    }

    /// As `prepare`, but with `resume` an existing partial directory is kept as it is (its
    /// owner decides whether its content can be continued).
    pub fn prepare_resumable(
        out: &Path,
        force: bool,
        inputs: &[&Path],
        resume: bool,
    ) -> Result<Self> {
        let out = out.components().as_path().to_path_buf();
        if out.as_os_str().is_empty() {
            return Err(Error::flag("--out", "empty path"));
        }
        if out.exists() {
            if !out.is_dir() {
                return Err(Error::flag(
                    "--out",
                    format!("{} exists and is not a directory", out.display()),
                ));
            }
            let canon = fs::canonicalize(&out).at(&out)?;
            for input in inputs {
                if fs::canonicalize(input).ok().as_deref() == Some(canon.as_path()) {
                    return Err(Error::flag(
                        "--out",
                        format!(
                            "{} is the input model directory; choose another",
                            out.display()
                        ),
                    ));
                }
            }
            let empty = fs::read_dir(&out).at(&out)?.next().is_none();
            if !empty && !is_ours(&out) && !force {
                return Err(Error::OutputNotOurs { path: out });
            }
        }
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).at(&parent)?;
        let partial = with_suffix(&out, PARTIAL_SUFFIX);
        if resume && partial.is_dir() {
            return Ok(StagedDir {
                target: out,
                partial,
                committed: false,
                keep: false,
            });
        }
        if partial.exists() {
            fs::remove_dir_all(&partial).at(&partial)?;
        }
        fs::create_dir(&partial).at(&partial)?;
        Ok(StagedDir {
            target: out,
            partial,
            committed: false,
            keep: false,
        })
    }

    /// From now on an error leaves the partial directory for a later `--resume`.
    pub fn keep_on_error(&mut self) {
        self.keep = true;
    }

    /// Removes everything in the partial directory except the named entries (files of an
    /// interrupted earlier attempt).
    pub fn clear_except(&self, keep: &[&str]) -> Result<()> {
        for entry in fs::read_dir(&self.partial).at(&self.partial)? {
            let entry = entry.at(&self.partial)?;
            let path = entry.path();
            if keep.iter().any(|k| entry.file_name() == *k) {
                continue;
            }
            if path.is_dir() {
                fs::remove_dir_all(&path).at(&path)?;
            } else {
                fs::remove_file(&path).at(&path)?;
            }
        }
        Ok(())
    }

    /// Where files are written until `commit`.
    pub fn path(&self) -> &Path {
        &self.partial
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Fsyncs the partial directory and renames it onto the target, replacing an old output
    /// only after the new one is in place.
    pub fn commit(mut self) -> Result<PathBuf> {
        fsync_dir(&self.partial)?;
        let old = with_suffix(&self.target, OLD_SUFFIX);
        let had_old = self.target.exists();
        if had_old {
            if old.exists() {
                fs::remove_dir_all(&old).at(&old)?;
            }
            fs::rename(&self.target, &old).at(&self.target)?;
        }
        if let Err(e) = fs::rename(&self.partial, &self.target) {
            if had_old {
                // Put the previous output back.
                let _ = fs::rename(&old, &self.target);
            }
            return Err(Error::io(&self.target, e));
        }
        self.committed = true;
        if let Some(parent) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
        if had_old {
            fs::remove_dir_all(&old).at(&old)?;
        }
        Ok(self.target.clone())
    }
}

fn fsync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|f| f.sync_all()).at(dir)
}

/// Writes a small file and fsyncs it.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path).at(path)?;
    f.write_all(bytes).at(path)?;
    f.sync_all().at(path)
}
