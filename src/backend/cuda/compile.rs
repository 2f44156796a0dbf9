//! Kernel sources (kernels/*.cu, embedded) compiled by NVRTC to a cubin for the device's
//! compute capability at first use, cached on disk under
//! `$XDG_CACHE_HOME/hy-quant/kernels` (else `~/.cache/hy-quant/kernels`), keyed by
//! sha256(source + options) + compute capability + NVRTC version.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const COMMON: &str = include_str!("../../../kernels/common.cuh");

/// One kernels/*.cu file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KernelFile {
    pub name: &'static str,
    pub source: &'static str,
}

pub(crate) const ELEMENTWISE: KernelFile = KernelFile {
    name: "elementwise",
    source: include_str!("../../../kernels/elementwise.cu"),
};
pub(crate) const ATTENTION: KernelFile = KernelFile {
    name: "attention",
    source: include_str!("../../../kernels/attention.cu"),
};
pub(crate) const GPTQ: KernelFile = KernelFile {
    name: "gptq",
    source: include_str!("../../../kernels/gptq.cu"),
};
pub(crate) const RTN: KernelFile = KernelFile {
    name: "rtn",
    source: include_str!("../../../kernels/rtn.cu"),
};
pub(crate) const GPTQ_SOLVE: KernelFile = KernelFile {
    name: "gptq_solve",
    source: include_str!("../../../kernels/gptq_solve.cu"),
};

impl KernelFile {
    /// common.cuh followed by the file, with `#line` so NVRTC's messages point at the file.
    pub fn full_source(&self) -> String {
        format!(
            "#line 1 \"common.cuh\"\n{COMMON}\n#line 1 \"{}.cu\"\n{}",
            self.name, self.source
        )
    }
}

/// The decode-kernel experiments (register caps, the column-tiled weight layout, the
/// asynchronous kernel; docs/cuda.md, "Profiled"): gptq.cu again with GPTQ_EXPERIMENTS
/// defined, which instantiates only those kernels. A module of its own, so the production one
/// neither compiles nor carries them; built at its first use (a forced experimental
/// `GemvKernel`), not by `warm_up`.
pub(crate) const GPTQ_EXPERIMENTS: KernelFile = KernelFile {
    name: "gptq_experiments",
    source: concat!(
        "#define GPTQ_EXPERIMENTS\n#line 1 \"gptq.cu\"\n",
        include_str!("../../../kernels/gptq.cu")
    ),
};

/// Every kernel file production code uses (what `CudaBackend::warm_up` compiles).
pub(crate) const ALL: [KernelFile; 5] = [ELEMENTWISE, ATTENTION, GPTQ, RTN, GPTQ_SOLVE];

/// Compiles every kernel file (`ALL` and `GPTQ_EXPERIMENTS`) for compute capability `cc` without
/// a GPU or a cache (only libnvrtc is needed): a check that the sources build, and the cubin
/// sizes.
pub fn compile_all(cc: (i32, i32)) -> Result<Vec<(&'static str, usize)>> {
    compile_all_with(cc, &[]).map(|v| v.into_iter().map(|(n, s, _)| (n, s)).collect())
}

/// `compile_all` with extra NVRTC options (e.g. `--ptxas-options=-v`), returning each file's
/// compiler log too.
pub fn compile_all_with(
    cc: (i32, i32),
    extra: &[&str],
) -> Result<Vec<(&'static str, usize, String)>> {
    let libs = super::probe::libraries();
    if !libs.nvrtc {
        return Err(Error::cuda(
            "libnvrtc.so could not be loaded; put it on LD_LIBRARY_PATH or point CUDA_PATH at a CUDA toolkit",
        ));
    }
    super::probe::no_panic("NVRTC", || {
        let nvrtc = nvrtc_version()?;
        let include = cuda_include_dir();
        ALL.iter()
            .chain([GPTQ_EXPERIMENTS].iter())
            .map(|f| {
                let (bin, log) = compile_logged(f, cc, nvrtc, include.as_deref(), extra)?;
                Ok((f.name, bin.len(), log))
            })
            .collect()
    })
}

/// NVRTC's version (major, minor).
pub(crate) fn nvrtc_version() -> Result<(i32, i32)> {
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: both pointers are valid for writes; the library was checked present.
    let rc = unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
    if rc != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::cuda(format!("nvrtcVersion failed: {rc:?}")));
    }
    Ok((major, minor))
}

/// The CUDA toolkit's include directory: `$CUDA_PATH`, `$CUDA_HOME`, then /usr/local/cuda.
pub(crate) fn cuda_include_dir() -> Option<PathBuf> {
    toolkit_roots()
        .into_iter()
        .map(|r| r.join("include"))
        .find(|p| p.join("cuda.h").is_file() || p.join("cuda_fp16.h").is_file())
}

/// Candidate CUDA toolkit roots, in order of preference.
pub(crate) fn toolkit_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = ["CUDA_PATH", "CUDA_HOME"]
        .iter()
        .filter_map(std::env::var_os)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .collect();
    roots.push(PathBuf::from("/usr/local/cuda"));
    roots
}

/// `$XDG_CACHE_HOME/hy-quant/kernels`, else `$HOME/.cache/hy-quant/kernels`.
pub(crate) fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("hy-quant").join("kernels"))
}

fn options(cc: (i32, i32), include: Option<&Path>) -> Vec<String> {
    let mut opts = vec![
        format!("--gpu-architecture=sm_{}{}", cc.0, cc.1),
        "--std=c++17".to_string(),
    ];
    if let Some(dir) = include {
        opts.push(format!("--include-path={}", dir.display()));
    }
    opts
}

/// Where the cubin of `file` for this device and NVRTC lives in `dir`.
pub(crate) fn cache_path(
    dir: &Path,
    file: &KernelFile,
    cc: (i32, i32),
    nvrtc: (i32, i32),
) -> PathBuf {
    let mut h = Sha256::new();
    h.update(file.full_source().as_bytes());
    // The include path is left out: it changes where headers come from, not the code.
    h.update(options(cc, None).join("\n").as_bytes());
    let digest = hex::encode(h.finalize());
    dir.join(format!(
        "{}-sm{}{}-nvrtc{}.{}-{}.cubin",
        file.name,
        cc.0,
        cc.1,
        nvrtc.0,
        nvrtc.1,
        &digest[..16]
    ))
}

/// The cubin of `file`: from the cache when present, else compiled (and cached when `dir` is
/// writable; a cache that cannot be written only costs a recompile next time).
pub(crate) fn cubin(
    file: &KernelFile,
    cc: (i32, i32),
    cache_dir: Option<&Path>,
) -> Result<Vec<u8>> {
    let nvrtc = nvrtc_version()?;
    let include = cuda_include_dir();
    let cached = cache_dir.map(|d| cache_path(d, file, cc, nvrtc));
    if let Some(p) = &cached {
        if let Ok(bytes) = std::fs::read(p) {
            if !bytes.is_empty() {
                return Ok(bytes);
            }
        }
    }
    let bin = compile(file, cc, nvrtc, include.as_deref())?;
    if let Some(p) = &cached {
        let _ = write_atomic(p, &bin);
    }
    Ok(bin)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn c_buf_to_string(buf: &[c_char]) -> String {
    // SAFETY: NVRTC returns NUL-terminated buffers; fall back to lossy bytes otherwise.
    if buf.contains(&0) {
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    } else {
        String::from_utf8_lossy(&buf.iter().map(|&c| c as u8).collect::<Vec<_>>()).into_owned()
    }
}

fn compile(
    file: &KernelFile,
    cc: (i32, i32),
    nvrtc_ver: (i32, i32),
    include: Option<&Path>,
) -> Result<Vec<u8>> {
    compile_logged(file, cc, nvrtc_ver, include, &[]).map(|(bin, _)| bin)
}

fn compile_logged(
    file: &KernelFile,
    cc: (i32, i32),
    nvrtc_ver: (i32, i32),
    include: Option<&Path>,
    extra: &[&str],
) -> Result<(Vec<u8>, String)> {
    let src = CString::new(file.full_source())
        .map_err(|_| Error::cuda(format!("kernels/{}.cu contains a NUL byte", file.name)))?;
    let name = CString::new(format!("{}.cu", file.name))
        .map_err(|_| Error::cuda("kernel name contains a NUL byte"))?;
    let prog = nvrtc::create_program(&src, Some(&name))
        .map_err(|e| Error::cuda(format!("nvrtcCreateProgram({}.cu): {e:?}", file.name)))?;
    let mut opts = options(cc, include);
    opts.extend(extra.iter().map(|o| o.to_string()));
    // SAFETY: `prog` is a live program; the options are plain strings.
    let compiled = unsafe { nvrtc::compile_program(prog, &opts) };
    let result = match compiled {
        Err(e) => {
            // SAFETY: `prog` is live.
            let log = unsafe { nvrtc::get_program_log(prog) }
                .map(|l| c_buf_to_string(&l))
                .unwrap_or_default();
            let hint = if log.contains("cannot open source file") {
                match include {
                    Some(d) => format!(
                        " (a header was not found under {}; point CUDA_PATH at a CUDA toolkit with its include/ folder)",
                        d.display()
                    ),
                    None => " (no CUDA include directory found: set CUDA_PATH or CUDA_HOME to a CUDA toolkit, or install one at /usr/local/cuda)".to_string(),
                }
            } else if log.contains("invalid value for --gpu-architecture") {
                format!(
                    " (NVRTC {}.{} does not know sm_{}{}; use a newer CUDA toolkit)",
                    nvrtc_ver.0, nvrtc_ver.1, cc.0, cc.1
                )
            } else {
                String::new()
            };
            Err(Error::cuda(format!(
                "NVRTC {}.{} failed to compile kernels/{}.cu for sm_{}{} ({e:?}){hint}:\n{}",
                nvrtc_ver.0,
                nvrtc_ver.1,
                file.name,
                cc.0,
                cc.1,
                log.trim()
            )))
        }
        Ok(()) => get_cubin(prog, file.name).map(|bin| {
            // SAFETY: `prog` is live.
            let log = unsafe { nvrtc::get_program_log(prog) }
                .map(|l| c_buf_to_string(&l))
                .unwrap_or_default();
            (bin, log)
        }),
    };
    // SAFETY: `prog` is live and not used after this.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    result
}

fn get_cubin(prog: nvrtc_sys::nvrtcProgram, name: &str) -> Result<Vec<u8>> {
    let mut size = 0usize;
    // SAFETY: `prog` compiled successfully; `size` is valid for writes.
    let rc = unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size) };
    if rc != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
        return Err(Error::cuda(format!(
            "nvrtcGetCUBINSize({name}.cu): {rc:?}, size {size}"
        )));
    }
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` holds `size` bytes, as NVRTC asked for.
    let rc = unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char) };
    if rc != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::cuda(format!("nvrtcGetCUBIN({name}.cu): {rc:?}")));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_changes_with_device_and_compiler() {
        let dir = Path::new("/tmp/k");
        let a = cache_path(dir, &ELEMENTWISE, (9, 0), (13, 0));
        assert_eq!(a, cache_path(dir, &ELEMENTWISE, (9, 0), (13, 0)));
        assert_ne!(a, cache_path(dir, &ELEMENTWISE, (8, 0), (13, 0)));
        assert_ne!(a, cache_path(dir, &ELEMENTWISE, (9, 0), (13, 1)));
        assert_ne!(a, cache_path(dir, &GPTQ, (9, 0), (13, 0)));
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("elementwise-sm90-nvrtc13.0-"), "{name}");
    }

    #[test]
    fn sources_are_prefixed_with_the_common_header() {
        let s = GPTQ.full_source();
        assert!(s.starts_with("#line 1 \"common.cuh\""));
        assert!(s.contains("#line 1 \"gptq.cu\""));
        assert!(s.contains("gptq_gemv(") && s.contains("extern \"C\" __global__"));
    }
}
