//! The crate's error type. Every variant names the file, tensor or flag at fault and what was
//! expected, so the binary can print it as is.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: not found ({what})")]
    Missing { path: PathBuf, what: String },

    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: bad config: {msg}")]
    Config { path: PathBuf, msg: String },

    #[error("unsupported architecture {found:?} in {path}; supported: {supported}")]
    UnsupportedArch {
        path: PathBuf,
        found: String,
        supported: String,
    },

    #[error("{path}: corrupt safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },

    #[error("tensor {tensor}: {msg}")]
    Tensor { tensor: String, msg: String },

    #[error("invalid flag {flag}: {msg}")]
    Flag { flag: String, msg: String },

    #[error("{path}: output directory exists and was not written by hy-quant; pass --force to replace it")]
    OutputNotOurs { path: PathBuf },

    #[error("model {id}: {msg}")]
    Hub { id: String, msg: String },

    #[error("evaluation: {msg}")]
    Eval { msg: String },

    #[error("verification failed for {path}: {msg}")]
    Verify { path: PathBuf, msg: String },

    #[error("{path}: tokenizer: {msg}")]
    Tokenizer { path: PathBuf, msg: String },

    #[error("runner: {msg}")]
    Runner { msg: String },

    /// A calibration corpus that cannot be used (file and line where it applies).
    #[error("calibration {path}: {msg}")]
    Calib { path: PathBuf, msg: String },

    /// A non-finite value met during calibrated quantization (names layer and point).
    #[error("calibration forward, {at}: {msg}")]
    Activation { at: String, msg: String },

    /// A calibrated run stopped by an error after finishing some layers; they are kept.
    #[error("{source}\n(progress of {layers} finished layer(s) kept in {partial}; rerun the same command with --resume to continue)")]
    Interrupted {
        partial: PathBuf,
        layers: usize,
        source: Box<Error>,
    },

    /// A partial output that `--resume` cannot continue.
    #[error("{path}: cannot resume: {msg}")]
    Resume { path: PathBuf, msg: String },

    /// The CUDA backend: driver or libraries missing, no GPU, a failed call or kernel build.
    #[error("cuda: {msg}")]
    Cuda { msg: String },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn tensor(tensor: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor {
            tensor: tensor.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn cuda(msg: impl Into<String>) -> Self {
        Error::Cuda { msg: msg.into() }
    }

    pub(crate) fn flag(flag: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Flag {
            flag: flag.into(),
            msg: msg.into(),
        }
    }
}

/// Attaches a path to `std::io::Error`s.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
