//! Pinned (page-locked) staging for large host <-> device copies.
//!
//! A copy from pageable host memory goes through the driver's own small bounce buffer and
//! measured ~1.3 GB/s on the H200 host (docs/perf.md, GPU GPTQ); from pinned memory the DMA
//! runs at PCIe speed. Large copies therefore go through two 32 MiB pinned buffers in turn:
//! the host fills (or drains) one while the DMA of the other runs. Each buffer has an event
//! recorded after its DMA, waited on before the buffer is touched again, so the buffers are
//! reused across calls safely. Copies below `MIN_STAGED` bytes keep the direct path.

use std::sync::Arc;

use cudarc::driver::{
    result, sys, CudaContext, CudaEvent, CudaStream, DriverError, PinnedHostSlice,
};

/// Bytes per thread in a staging copy.
const COPY_PART: usize = 4 << 20;

/// `dst.copy_from_slice(src)` on several threads: one thread's memcpy into (or out of) pinned
/// memory runs well below PCIe speed, so the host side of a staged copy would be the
/// bottleneck.
fn par_copy(dst: &mut [u8], src: &[u8]) {
    use rayon::prelude::*;
    dst.par_chunks_mut(COPY_PART)
        .zip(src.par_chunks(COPY_PART))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

/// Bytes per staging buffer.
const CHUNK: usize = 32 << 20;
/// Smaller copies go directly (the staging's extra host copy would not pay off).
pub(super) const MIN_STAGED: usize = 4 << 20;

pub(super) struct Staging {
    /// Write-combined: the host only writes them, the device reads them.
    up: [PinnedHostSlice<u8>; 2],
    /// Cached pinned memory: the host reads them after the device wrote them.
    down: [PinnedHostSlice<u8>; 2],
    up_done: [CudaEvent; 2],
    down_done: [CudaEvent; 2],
}

impl Staging {
    pub(super) fn new(ctx: &Arc<CudaContext>) -> Result<Self, DriverError> {
        // SAFETY: the buffers are written before they are read (upload fills the part it
        // copies; download's DMA writes the part the host then reads).
        let (up, down) = unsafe {
            (
                [
                    ctx.alloc_pinned::<u8>(CHUNK)?,
                    ctx.alloc_pinned::<u8>(CHUNK)?,
                ],
                [
                    ctx.alloc_pinned_with_flags::<u8>(CHUNK, 0)?,
                    ctx.alloc_pinned_with_flags::<u8>(CHUNK, 0)?,
                ],
            )
        };
        let ev = || ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING));
        Ok(Staging {
            up,
            down,
            up_done: [ev()?, ev()?],
            down_done: [ev()?, ev()?],
        })
    }

    /// Queues the copy of `src` to device address `dst` on `stream` (like cuMemcpyHtoDAsync:
    /// later work on the stream sees the data). Returns once `src` is no longer needed.
    pub(super) fn upload(
        &mut self,
        stream: &Arc<CudaStream>,
        dst: sys::CUdeviceptr,
        src: &[u8],
    ) -> Result<(), DriverError> {
        for (i, chunk) in src.chunks(CHUNK).enumerate() {
            let b = i % 2;
            // The previous DMA out of this buffer has finished.
            self.up_done[b].synchronize()?;
            let buf = &mut self.up[b].as_mut_slice()?[..chunk.len()];
            par_copy(buf, chunk);
            // SAFETY: `buf` is pinned and stays untouched until `up_done[b]` has passed; the
            // destination range lies inside the caller's allocation.
            unsafe {
                result::memcpy_htod_async(dst + (i * CHUNK) as u64, buf, stream.cu_stream())?;
            }
            self.up_done[b].record(stream)?;
        }
        Ok(())
    }

    /// Copies device address `src` into `dst` (after the work queued on `stream` before it),
    /// synchronously.
    pub(super) fn download(
        &mut self,
        stream: &Arc<CudaStream>,
        src: sys::CUdeviceptr,
        dst: &mut [u8],
    ) -> Result<(), DriverError> {
        let total = dst.len();
        let n = total.div_ceil(CHUNK);
        let len = |i: usize| CHUNK.min(total - i * CHUNK);
        let issue = |s: &mut Self, i: usize| -> Result<(), DriverError> {
            let b = i % 2;
            let buf = &mut s.down[b].as_mut_slice()?[..len(i)];
            // SAFETY: pinned buffer read by the host only after `down_done[b]`; the source
            // range lies inside the caller's allocation.
            unsafe {
                result::memcpy_dtoh_async(buf, src + (i * CHUNK) as u64, stream.cu_stream())?;
            }
            s.down_done[b].record(stream)
        };
        if n > 0 {
            issue(self, 0)?;
        }
        for i in 0..n {
            if i + 1 < n {
                issue(self, i + 1)?;
            }
            let b = i % 2;
            self.down_done[b].synchronize()?;
            let l = len(i);
            par_copy(
                &mut dst[i * CHUNK..i * CHUNK + l],
                &self.down[b].as_slice()?[..l],
            );
        }
        Ok(())
    }
}
