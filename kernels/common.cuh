// Shared by every kernel file (prepended by src/backend/cuda/compile.rs before NVRTC sees it).
// No CUDA headers are included: 16-bit floats travel as their bit patterns (unsigned short)
// and are converted here, so NVRTC needs no include path for our own kernels.

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// bf16 is the top half of an f32.
__device__ __forceinline__ float bf16_to_f32(u16 b) { return __uint_as_float(((u32)b) << 16); }

// Round to nearest even, NaN stays NaN (same results as the `half` crate's bf16::from_f32).
__device__ __forceinline__ u16 f32_to_bf16(float x) {
    u32 u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// kind: 0 = f16, 1 = bf16 (HalfKind::code).
__device__ __forceinline__ float half_to_f32(u16 b, u32 kind) {
    return kind ? bf16_to_f32(b) : f16_to_f32(b);
}

__device__ __forceinline__ u16 f32_to_half(float x, u32 kind) {
    return kind ? f32_to_bf16(x) : f32_to_f16(x);
}

__device__ __forceinline__ float round_half(float x, u32 kind) {
    return half_to_f32(f32_to_half(x, kind), kind);
}

// Programmatic dependent launch (sm_90+; no-ops below and when the launch did not ask for it,
// PTX ISA "griddepcontrol"). A kernel the host launches with programmatic stream serialization
// (src/backend/cuda/launch.rs) may start while the kernel before it still runs: it must call
// `pdl_wait` before it reads anything an earlier kernel wrote or writes anything an earlier
// kernel reads; what it does before (loading weights) overlaps the earlier kernel's tail.
// `pdl_launch_dependents` lets such a next kernel start now instead of when this one exits.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// The first thing a decode step's small kernel does (the host may launch it as a programmatic
// dependent launch, `CudaOptions::pdl_small`): let the next kernel start, then wait for the
// kernels before (it reads and writes nothing before that).
__device__ __forceinline__ void pdl_start() {
    pdl_launch_dependents();
    pdl_wait();
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// The order is fixed, so the result is deterministic.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const u32 nwarps = blockDim.x >> 5;
    float s = 0.0f;
    for (u32 w = 0; w < nwarps; ++w) s += partial[w];
    return s;
}

// --- The quantization grid's f32 operations, shared by rtn.cu and gptq_solve.cu so both
// reproduce src/quant/grid.rs bit for bit.

// grid.rs round_half_even: (x + 1.5*2^23) - 1.5*2^23 for |x| < 2^22, else x.
__device__ __forceinline__ float grid_round_half_even(float x) {
    const float MAGIC = 12582912.0f;
    return fabsf(x) < 4194304.0f ? __fsub_rn(__fadd_rn(x, MAGIC), MAGIC) : x;
}

// Rust's saturating `f32 as u32`.
__device__ __forceinline__ u32 grid_f32_as_u32(float x) {
    if (!(x > 0.0f)) return 0u;
    if (x >= 4294967296.0f) return 0xffffffffu;
    return (u32)x;
}

// store: 0 = f16, 1 = bf16, 2 = f32 (DType::round_f32).
__device__ __forceinline__ float grid_store_round(float x, u32 store) {
    return store == 2u ? x : round_half(x, store);
}

// DType::min_positive: the smallest subnormal of the store type.
__device__ __forceinline__ float grid_store_min_positive(u32 store) {
    if (store == 2u) return __int_as_float(1);
    if (store == 1u) return __uint_as_float(1u << 16);
    return 5.9604644775390625e-8f;  // 2^-24, f16 bits 0x0001
}
