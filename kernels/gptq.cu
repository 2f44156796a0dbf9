// W4A16 / W8A16 linears straight from GPTQ v1 tensors (layout: src/export/gptq_v1.rs,
// docs/formats.md; facts from AutoGPTQ `qlinear_cuda_old.py` and vLLM
// `layers/quantization/gptq.py`):
//   qweight int32 [K/pf, N]   row r holds k = r*pf + j at bits*j (pf = 32/bits)
//   qzeros  int32 [G, N/pf]   zero - 1 of column n at bits*(n % pf) of word n/pf
//   scales  half  [G, N]
//   g_idx   int32 [K]         group of input k; null = k / group_len (sequential)
// Weights are dequantized in registers to half(scale * (q - zero)), exactly the weight
// `hy-quant dequantize` writes, and multiplied in f32 with f32 accumulation. Every sum runs
// in a fixed order (no atomics), so results are deterministic.

__device__ __forceinline__ float gptq_zero(const int* qzeros, u32 g, u32 n, u32 n_out, u32 bits) {
    const u32 pf = 32u / bits, mask = (1u << bits) - 1u;
    const u32 word = (u32)qzeros[(u64)g * (n_out / pf) + n / pf];
    // Loaders add the 1 back without masking (a stored 2^bits - 1 reads as 2^bits).
    return (float)(((word >> (bits * (n % pf))) & mask) + 1u);
}

// Decode (GEMV-like, m <= MB rows): a block owns 32 output columns, its warps split the
// packed rows of K (warp w takes rows w, w + nwarps, ...), then the per-warp sums are added
// in warp order. Lanes of a warp read 32 consecutive columns of one qweight row (128-byte
// coalesced); all lanes read the same activation (broadcast).
#define GEMV_WARPS 8
template <u32 BITS, u32 MB>
__device__ __forceinline__ void gptq_gemv(const u16* __restrict__ x, const int* __restrict__ qweight,
                                          const int* __restrict__ qzeros, const u16* __restrict__ scales,
                                          const int* __restrict__ g_idx, float* __restrict__ out,
                                          u32 m, u32 n_out, u32 k_in, u32 group_len, u32 kind) {
    __shared__ float red[GEMV_WARPS][MB][32];
    const u32 PF = 32u / BITS, MASK = (1u << BITS) - 1u;
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const u32 n = blockIdx.x * 32u + lane;
    float acc[MB];
#pragma unroll
    for (u32 b = 0; b < MB; ++b) acc[b] = 0.0f;
    if (n < n_out) {
        const u32 words = k_in / PF;
        for (u32 r = warp; r < words; r += GEMV_WARPS) {
            const u32 word = (u32)qweight[(u64)r * n_out + n];
            const u32 k0 = r * PF;
            if (g_idx == 0) {
                const u32 g = k0 / group_len;
                const float s = half_to_f32(scales[(u64)g * n_out + n], kind);
                const float z = gptq_zero(qzeros, g, n, n_out, BITS);
#pragma unroll
                for (u32 j = 0; j < PF; ++j) {
                    const float w = round_half(s * ((float)((word >> (BITS * j)) & MASK) - z), kind);
#pragma unroll
                    for (u32 b = 0; b < MB; ++b)
                        if (b < m) acc[b] += w * half_to_f32(x[(u64)b * k_in + k0 + j], kind);
                }
            } else {
#pragma unroll
                for (u32 j = 0; j < PF; ++j) {
                    const u32 g = (u32)g_idx[k0 + j];
                    const float s = half_to_f32(scales[(u64)g * n_out + n], kind);
                    const float z = gptq_zero(qzeros, g, n, n_out, BITS);
                    const float w = round_half(s * ((float)((word >> (BITS * j)) & MASK) - z), kind);
#pragma unroll
                    for (u32 b = 0; b < MB; ++b)
                        if (b < m) acc[b] += w * half_to_f32(x[(u64)b * k_in + k0 + j], kind);
                }
            }
        }
    }
#pragma unroll
    for (u32 b = 0; b < MB; ++b) red[warp][b][lane] = acc[b];
    __syncthreads();
    if (warp == 0 && n < n_out) {
#pragma unroll
        for (u32 b = 0; b < MB; ++b) {
            if (b < m) {
                float s = 0.0f;
                for (u32 w = 0; w < GEMV_WARPS; ++w) s += red[w][b][lane];
                out[(u64)b * n_out + n] = s;
            }
        }
    }
}

#define GEMV_KERNEL(BITS, MB)                                                                      \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32) gptq_gemv_w##BITS##_m##MB(      \
        const u16* x, const int* qweight, const int* qzeros, const u16* scales, const int* g_idx, \
        float* out, u32 m, u32 n_out, u32 k_in, u32 group_len, u32 kind) {                        \
        gptq_gemv<BITS, MB>(x, qweight, qzeros, scales, g_idx, out, m, n_out, k_in, group_len,    \
                            kind);                                                                 \
    }
GEMV_KERNEL(4, 1)
GEMV_KERNEL(4, 2)
GEMV_KERNEL(4, 4)
GEMV_KERNEL(4, 8)
GEMV_KERNEL(4, 16)
GEMV_KERNEL(8, 1)
GEMV_KERNEL(8, 2)
GEMV_KERNEL(8, 4)
GEMV_KERNEL(8, 8)
GEMV_KERNEL(8, 16)

// Prefill (GEMM): 64x64 output tile per block of 256 threads, K in steps of 32. The activation
// tile is stored transposed in shared memory, the weight tile is dequantized into shared memory
// once per step, each thread accumulates a 4x4 block over k in order.
#define TM 64
#define TN 64
#define TK 32
extern "C" __global__ void __launch_bounds__(256)
gptq_gemm(const u16* __restrict__ x, const int* __restrict__ qweight, const int* __restrict__ qzeros,
          const u16* __restrict__ scales, const int* __restrict__ g_idx, float* __restrict__ out,
          u32 m, u32 n_out, u32 k_in, u32 group_len, u32 bits, u32 kind) {
    __shared__ float xs[TK][TM + 1];
    __shared__ float ws[TK][TN + 1];
    const u32 pf = 32u / bits, mask = (1u << bits) - 1u;
    const u32 tid = threadIdx.x;
    const u32 tx = tid % 16u, ty = tid / 16u;
    const u32 m0 = blockIdx.y * TM, n0 = blockIdx.x * TN;
    float acc[4][4];
#pragma unroll
    for (u32 i = 0; i < 4; ++i)
#pragma unroll
        for (u32 j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (u32 k0 = 0; k0 < k_in; k0 += TK) {
#pragma unroll
        for (u32 e = tid; e < TM * TK; e += 256u) {
            const u32 row = e / TK, kk = e % TK;
            const u32 gm = m0 + row, gk = k0 + kk;
            xs[kk][row] = (gm < m && gk < k_in) ? half_to_f32(x[(u64)gm * k_in + gk], kind) : 0.0f;
        }
#pragma unroll
        for (u32 e = tid; e < TK * TN; e += 256u) {
            const u32 kk = e / TN, nn = e % TN;
            const u32 gk = k0 + kk, gn = n0 + nn;
            float w = 0.0f;
            if (gk < k_in && gn < n_out) {
                const u32 word = (u32)qweight[(u64)(gk / pf) * n_out + gn];
                const u32 q = (word >> (bits * (gk % pf))) & mask;
                const u32 g = g_idx ? (u32)g_idx[gk] : gk / group_len;
                const float s = half_to_f32(scales[(u64)g * n_out + gn], kind);
                const float z = gptq_zero(qzeros, g, gn, n_out, bits);
                w = round_half(s * ((float)q - z), kind);
            }
            ws[kk][nn] = w;
        }
        __syncthreads();
#pragma unroll 8
        for (u32 kk = 0; kk < TK; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (u32 i = 0; i < 4; ++i) a[i] = xs[kk][ty * 4 + i];
#pragma unroll
            for (u32 j = 0; j < 4; ++j) b[j] = ws[kk][tx * 4 + j];
#pragma unroll
            for (u32 i = 0; i < 4; ++i)
#pragma unroll
                for (u32 j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (u32 i = 0; i < 4; ++i) {
        const u32 gm = m0 + ty * 4 + i;
        if (gm >= m) continue;
#pragma unroll
        for (u32 j = 0; j < 4; ++j) {
            const u32 gn = n0 + tx * 4 + j;
            if (gn < n_out) out[(u64)gm * n_out + gn] = acc[i][j];
        }
    }
}

// The weight a GPTQ loader reconstructs, [N, K] in half; one thread per weight, consecutive
// threads on consecutive columns n (coalesced qweight reads).
extern "C" __global__ void gptq_dequantize(const int* __restrict__ qweight, const int* __restrict__ qzeros,
                                           const u16* __restrict__ scales, const int* __restrict__ g_idx,
                                           u16* __restrict__ out, u32 n_out, u32 k_in, u32 group_len,
                                           u32 bits, u32 kind) {
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)n_out * k_in) return;
    const u32 pf = 32u / bits, mask = (1u << bits) - 1u;
    const u32 n = (u32)(idx % n_out), k = (u32)(idx / n_out);
    const u32 word = (u32)qweight[(u64)(k / pf) * n_out + n];
    const u32 q = (word >> (bits * (k % pf))) & mask;
    const u32 g = g_idx ? (u32)g_idx[k] : k / group_len;
    const float s = half_to_f32(scales[(u64)g * n_out + n], kind);
    const float z = gptq_zero(qzeros, g, n, n_out, bits);
    out[(u64)n * k_in + k] = f32_to_half(s * ((float)q - z), kind);
}
