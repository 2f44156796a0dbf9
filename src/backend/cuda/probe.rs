//! Is CUDA usable here? Finds libcuda (the driver), libnvrtc and libcublas at run time without
//! ever letting cudarc's loader panic: every library is checked with cudarc's own
//! `is_culib_present` (the same name candidates its loader tries) before any of its functions
//! is called.
//!
//! Libraries of a CUDA toolkit that is not on the loader's search path (`$CUDA_PATH/lib64`,
//! `$CUDA_HOME/lib64`, /usr/local/cuda/lib64) are opened by full path first; glibc then
//! resolves cudarc's later `dlopen("libnvrtc.so.13")` to the already loaded object by its
//! SONAME.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::backend::cuda::compile::toolkit_roots;
use crate::error::{Error, Result};

/// Toolkit libraries cudarc loads by name, in dependency order.
const TOOLKIT_LIBS: [&str; 4] = [
    "libnvrtc-builtins.so",
    "libnvrtc.so",
    "libcublasLt.so",
    "libcublas.so",
];

/// cuSOLVER and what it links against (libcusparse, which needs libnvJitLink), in dependency
/// order: opened only when a GPTQ solve first needs them.
const SOLVER_LIBS: [&str; 3] = ["libnvJitLink.so", "libcusparse.so", "libcusolver.so"];

fn toolkit_lib_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for root in toolkit_roots() {
        for sub in [
            "lib64",
            "lib",
            "targets/x86_64-linux/lib",
            "targets/sbsa-linux/lib",
        ] {
            let d = root.join(sub);
            if d.is_dir() && !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    dirs
}

/// The file in `dir` that best matches `prefix` (libfoo.so, libfoo.so.13, libfoo.so.13.0.88):
/// the shortest versioned name, so the SONAME-named link is preferred.
fn find_lib(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == prefix || n.starts_with(&format!("{prefix}.")))
        })
        .collect();
    found.sort_by_key(|p| {
        let n = p.file_name().map(|n| n.len()).unwrap_or(usize::MAX);
        // Bare `libfoo.so` is a dev symlink that may be missing or point elsewhere: last.
        (p.file_name().and_then(|n| n.to_str()) == Some(prefix), n)
    });
    found.into_iter().next()
}

/// Opens the toolkit libraries found under the toolkit roots (once per process) and keeps
/// them loaded. Returns what it loaded, for `describe`.
fn preload_toolkit() -> &'static [PathBuf] {
    static LOADED: OnceLock<Vec<PathBuf>> = OnceLock::new();
    LOADED.get_or_init(|| preload(&TOOLKIT_LIBS))
}

/// `preload_toolkit` for `SOLVER_LIBS`.
fn preload_solver() -> &'static [PathBuf] {
    static LOADED: OnceLock<Vec<PathBuf>> = OnceLock::new();
    LOADED.get_or_init(|| {
        preload_toolkit();
        preload(&SOLVER_LIBS)
    })
}

fn preload(libs: &[&str]) -> Vec<PathBuf> {
    let mut loaded = Vec::new();
    for dir in toolkit_lib_dirs() {
        for &lib in libs {
            if loaded.iter().any(|p: &PathBuf| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(lib))
            }) {
                continue;
            }
            if let Some(path) = find_lib(&dir, lib) {
                // SAFETY: loading a shared library runs its initializers; these are
                // NVIDIA's own toolkit libraries, which cudarc would load anyway.
                if let Ok(handle) = unsafe { libloading::Library::new(&path) } {
                    // Kept for the life of the process, like cudarc's own handles.
                    std::mem::forget(handle);
                    loaded.push(path);
                }
            }
        }
    }
    loaded
}

/// Which CUDA libraries can be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Libraries {
    pub driver: bool,
    pub nvrtc: bool,
    pub cublas: bool,
    pub cublaslt: bool,
    /// Toolkit libraries opened by full path from a toolkit root.
    pub preloaded: Vec<PathBuf>,
}

/// Looks for the libraries; never panics.
pub fn libraries() -> Libraries {
    let preloaded = preload_toolkit().to_vec();
    // SAFETY: these only try `dlopen` on cudarc's candidate names and close the handles.
    unsafe {
        Libraries {
            driver: cudarc::driver::sys::is_culib_present(),
            nvrtc: cudarc::nvrtc::sys::is_culib_present(),
            cublas: cudarc::cublas::sys::is_culib_present(),
            cublaslt: cudarc::cublaslt::sys::is_culib_present(),
            preloaded,
        }
    }
}

impl Libraries {
    /// `Err` naming the first missing library and how to make it visible.
    pub fn require_all(&self) -> Result<()> {
        if !self.driver {
            return Err(Error::cuda(
                "no NVIDIA driver found (libcuda.so could not be loaded); install the driver or run on a machine with a GPU",
            ));
        }
        let hint =
            "put the CUDA 13 toolkit's lib64 on LD_LIBRARY_PATH or point CUDA_PATH at the toolkit";
        for (present, name) in [
            (self.nvrtc, "libnvrtc.so"),
            (self.cublaslt, "libcublasLt.so"),
            (self.cublas, "libcublas.so"),
        ] {
            if !present {
                return Err(Error::cuda(format!(
                    "the NVIDIA driver is present but {name} could not be loaded; {hint}"
                )));
            }
        }
        Ok(())
    }
}

/// Runs `f`, turning a panic inside cudarc (a missing symbol in an old driver, say) into an
/// error instead of unwinding through the caller.
pub(crate) fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(Error::cuda(format!("{what}: {msg}")))
        }
    }
}

/// Whether libcusolver can be loaded (GPTQ on the GPU needs it; nothing else does).
pub fn cusolver_present() -> bool {
    preload_solver();
    // SAFETY: only tries `dlopen` on cudarc's candidate names and closes the handles.
    unsafe { cudarc::cusolver::sys::is_culib_present() }
}

/// Number of CUDA devices, or why there is none.
pub fn device_count() -> Result<usize> {
    libraries().require_all()?;
    no_panic("cuInit", || {
        cudarc::driver::result::init()
            .map_err(|e| Error::cuda(format!("the driver is installed but cuInit failed: {e}")))?;
        let n = cudarc::driver::result::device::get_count()
            .map_err(|e| Error::cuda(format!("cuDeviceGetCount failed: {e}")))?;
        Ok(n.max(0) as usize)
    })
}

/// One paragraph about what was found (for `--device` diagnostics and the GPU test logs).
pub fn describe() -> String {
    let libs = libraries();
    let mut s = format!(
        "libcuda: {}, libnvrtc: {}, libcublas: {}, libcublasLt: {}",
        yes_no(libs.driver),
        yes_no(libs.nvrtc),
        yes_no(libs.cublas),
        yes_no(libs.cublaslt)
    );
    if !libs.preloaded.is_empty() {
        let names: Vec<String> = libs
            .preloaded
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        s.push_str(&format!("; opened from the toolkit: {}", names.join(", ")));
    }
    if libs.driver {
        // Only here and at the first GPTQ solve is cuSOLVER looked for.
        s.push_str(&format!(", libcusolver: {}", yes_no(cusolver_present())));
    }
    match device_count() {
        Ok(n) => s.push_str(&format!("; {n} device(s)")),
        Err(e) => s.push_str(&format!("; {e}")),
    }
    s
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "found"
    } else {
        "missing"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_lib_prefers_the_soname_link() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "libnvrtc.so",
            "libnvrtc.so.13",
            "libnvrtc.so.13.0.88",
            "libnvrtc-builtins.so.13.0",
        ] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let got = find_lib(dir.path(), "libnvrtc.so").unwrap();
        assert_eq!(got.file_name().unwrap(), "libnvrtc.so.13");
        let got = find_lib(dir.path(), "libnvrtc-builtins.so").unwrap();
        assert_eq!(got.file_name().unwrap(), "libnvrtc-builtins.so.13.0");
        assert!(find_lib(dir.path(), "libcublas.so").is_none());
    }

    #[test]
    fn panics_become_errors() {
        let err =
            no_panic("probe", || -> Result<()> { panic!("Missing symbol cuFoo") }).unwrap_err();
        assert!(err.to_string().contains("Missing symbol cuFoo"), "{err}");
    }
}
