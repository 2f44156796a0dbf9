//! SHA-256 digests of files, as recorded in `manifest.json`.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{IoContext, Result};

/// A file's name (relative to its directory), size and SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Hashes a file in 8 MiB reads.
pub fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut file = std::fs::File::open(path).at(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex::encode(hasher.finalize())))
}

impl FileDigest {
    /// Hashes `dir/rel`.
    pub fn of(dir: &Path, rel: &str) -> Result<Self> {
        let (bytes, sha256) = sha256_file(&dir.join(rel))?;
        Ok(FileDigest {
            path: rel.to_string(),
            bytes,
            sha256,
        })
    }
}
