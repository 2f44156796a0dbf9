//! Kernel launches through the driver's `cuLaunchKernelEx`, optionally as a programmatic
//! dependent launch (PDL; sm_90 and later, CUDA programming guide "Programmatic Dependent
//! Launch and Synchronization"): with `CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION`
//! the kernel may start while the kernel before it on the stream still runs, as soon as that
//! one's blocks have all called `griddepcontrol.launch_dependents` (or exited). The kernel
//! must then call `griddepcontrol.wait` before it touches anything the earlier kernels
//! write or read (kernels/common.cuh, `pdl_wait`); the decode GEMV loads its first weights
//! before that, so their DRAM latency overlaps the small kernel before it.
//!
//! cudarc's `LaunchArgs` keeps its argument list private, so the arguments are gathered
//! here: every one as a 64-bit word (a device pointer, or a 32-bit value in the low half;
//! the driver copies each parameter's own size from the address it is given, and the words
//! are little-endian on every host CUDA supports).

use cudarc::driver::sys;
use cudarc::driver::{CudaFunction, CudaStream, DriverError, LaunchConfig};

/// A kernel's arguments, in order.
#[derive(Default)]
pub(crate) struct RawArgs(Vec<u64>);

impl RawArgs {
    /// A device pointer (0 for a null pointer).
    pub(crate) fn ptr(&mut self, p: sys::CUdeviceptr) -> &mut Self {
        self.0.push(p);
        self
    }

    /// A 32-bit unsigned value.
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.0.push(u64::from(v));
        self
    }

    /// A 64-bit unsigned value.
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.push(v);
        self
    }

    /// A 32-bit float (its bits in the low half).
    pub(crate) fn f32(&mut self, v: f32) -> &mut Self {
        self.0.push(u64::from(v.to_bits()));
        self
    }
}

/// Launches `f` on `stream` with `args`; `programmatic`: as a programmatic dependent launch.
///
/// # Safety
/// As `cudarc`'s `LaunchArgs::launch`: `args` must match the kernel's parameters (count,
/// sizes, and for pointers buffers of the sizes the kernel reads and writes, alive until the
/// kernel has run), `cfg` the block shape and shared memory it expects; with `programmatic`
/// the kernel must call `pdl_wait` before it touches memory earlier kernels use.
pub(crate) unsafe fn launch(
    stream: &CudaStream,
    f: &CudaFunction,
    cfg: LaunchConfig,
    args: &mut RawArgs,
    programmatic: bool,
) -> Result<(), DriverError> {
    stream.context().bind_to_thread()?;
    let mut params: Vec<*mut std::ffi::c_void> = args
        .0
        .iter_mut()
        .map(|w| w as *mut u64 as *mut std::ffi::c_void)
        .collect();
    // SAFETY: plain C structs, all-zero is a valid (empty) value of each.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let config = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: stream.cu_stream(),
        attrs: &mut attr,
        numAttrs: u32::from(programmatic),
    };
    // SAFETY: the caller's contract; `params` points into `args`, both alive for the call
    // (the driver copies the values before it returns).
    unsafe {
        sys::cuLaunchKernelEx(
            &config,
            f.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
}
