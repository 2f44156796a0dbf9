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

struct alignas(16) U32x4 {
    u32 x, y, z, w;
};

// Decode (GEMV-like, m <= MB rows, MB <= 16), split-K. A block of DEC_WARPS warps owns 128
// output columns (lane l: columns 4l..4l+3, one 16-byte qweight load per packed row) and one
// slice of K (blockIdx.y); its activations are staged once in shared memory as f32. Warps take
// the slice's packed rows round-robin, DEC_UNROLL loads in flight each; per-warp sums are added
// in warp order, and the per-slice partial sums are added in slice order by gptq_splitk_reduce
// (or written straight to `out` when there is one slice). No atomics: deterministic.
#define DEC_WARPS 4
#define DEC_UNROLL 4
template <u32 BITS, u32 MB>
__device__ __forceinline__ void gptq_decode(const u16* __restrict__ x, const int* __restrict__ qweight,
                                            const int* __restrict__ qzeros, const u16* __restrict__ scales,
                                            const int* __restrict__ g_idx, float* __restrict__ part,
                                            u32 m, u32 n_out, u32 k_in, u32 group_len, u32 kind,
                                            u32 rows_per_split) {
    extern __shared__ float smem[];  // [MB][kchunk] activations, then [DEC_WARPS][MB][128] sums
    const u32 PF = 32u / BITS, MASK = (1u << BITS) - 1u;
    const u32 words = k_in / PF;
    const u32 r0 = min(words, blockIdx.y * rows_per_split);
    const u32 r1 = min(words, r0 + rows_per_split);
    const u32 kbase = r0 * PF, kchunk = (r1 - r0) * PF;
    for (u32 i = threadIdx.x; i < MB * kchunk; i += blockDim.x) {
        const u32 b = i / kchunk, kk = i % kchunk;
        smem[i] = b < m ? half_to_f32(x[(u64)b * k_in + kbase + kk], kind) : 0.0f;
    }
    __syncthreads();
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const u32 n = blockIdx.x * 128u + lane * 4u;
    float acc[MB][4];
#pragma unroll
    for (u32 b = 0; b < MB; ++b)
#pragma unroll
        for (u32 c = 0; c < 4; ++c) acc[b][c] = 0.0f;
    if (n < n_out) {
        u32 cur_g = 0xffffffffu;
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f}, z[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (u32 r = r0 + warp; r < r1; r += DEC_WARPS * DEC_UNROLL) {
            U32x4 wv[DEC_UNROLL];
#pragma unroll
            for (u32 u = 0; u < DEC_UNROLL; ++u) {
                const u32 rr = r + u * DEC_WARPS;
                wv[u] = rr < r1 ? *reinterpret_cast<const U32x4*>(qweight + (u64)rr * n_out + n)
                                : U32x4{0u, 0u, 0u, 0u};
            }
#pragma unroll
            for (u32 u = 0; u < DEC_UNROLL; ++u) {
                const u32 rr = r + u * DEC_WARPS;
                if (rr >= r1) break;
                const u32 k0 = rr * PF;
                const float* xk = smem + (k0 - kbase);
                const u32 wd[4] = {wv[u].x, wv[u].y, wv[u].z, wv[u].w};
                if (g_idx == 0) {
                    const u32 g = k0 / group_len;
                    if (g != cur_g) {
                        cur_g = g;
#pragma unroll
                        for (u32 c = 0; c < 4; ++c) {
                            s[c] = half_to_f32(scales[(u64)g * n_out + n + c], kind);
                            z[c] = gptq_zero(qzeros, g, n + c, n_out, BITS);
                        }
                    }
// Large MB: k one at a time, so the compiler cannot hoist MB x PF activations into
// registers (it spills past 255 otherwise).
#define DEC_SEQ_K(j)                                                                                 \
    {                                                                                                \
        float xv[MB];                                                                                \
        _Pragma("unroll") for (u32 b = 0; b < MB; ++b) xv[b] = b < m ? xk[b * kchunk + (j)] : 0.0f; \
        _Pragma("unroll") for (u32 c = 0; c < 4; ++c) {                                              \
            const float w = round_half(s[c] * ((float)((wd[c] >> (BITS * (j))) & MASK) - z[c]), kind); \
            _Pragma("unroll") for (u32 b = 0; b < MB; ++b) acc[b][c] += w * xv[b];                   \
        }                                                                                            \
    }
                    if (MB >= 8) {
#pragma unroll 1
                        for (u32 j = 0; j < PF; ++j) DEC_SEQ_K(j)
                    } else {
#pragma unroll
                        for (u32 j = 0; j < PF; ++j) DEC_SEQ_K(j)
                    }
                } else {
                    // Act-order: the group can change at every k.
#pragma unroll 1
                    for (u32 j = 0; j < PF; ++j) {
                        const u32 g = (u32)g_idx[k0 + j];
#pragma unroll
                        for (u32 c = 0; c < 4; ++c) {
                            const float sc = half_to_f32(scales[(u64)g * n_out + n + c], kind);
                            const float zc = gptq_zero(qzeros, g, n + c, n_out, BITS);
                            const float w = round_half(sc * ((float)((wd[c] >> (BITS * j)) & MASK) - zc), kind);
#pragma unroll
                            for (u32 b = 0; b < MB; ++b)
                                if (b < m) acc[b][c] += w * xk[b * kchunk + j];
                        }
                    }
                }
            }
        }
    }
    __syncthreads();
    float* red = smem;
#pragma unroll
    for (u32 b = 0; b < MB; ++b)
#pragma unroll
        for (u32 c = 0; c < 4; ++c) red[(warp * MB + b) * 128u + lane * 4u + c] = acc[b][c];
    __syncthreads();
    for (u32 t = threadIdx.x; t < 128u; t += blockDim.x) {
        const u32 nn = blockIdx.x * 128u + t;
        if (nn >= n_out) continue;
        for (u32 b = 0; b < m && b < MB; ++b) {
            float sum = 0.0f;
            for (u32 w = 0; w < DEC_WARPS; ++w) sum += red[(w * MB + b) * 128u + t];
            part[((u64)blockIdx.y * m + b) * n_out + nn] = sum;
        }
    }
}

#define DECODE_KERNEL(BITS, MB)                                                                    \
    extern "C" __global__ void __launch_bounds__(DEC_WARPS * 32) gptq_gemv_w##BITS##_m##MB(       \
        const u16* x, const int* qweight, const int* qzeros, const u16* scales, const int* g_idx, \
        float* part, u32 m, u32 n_out, u32 k_in, u32 group_len, u32 kind, u32 rows_per_split) {   \
        gptq_decode<BITS, MB>(x, qweight, qzeros, scales, g_idx, part, m, n_out, k_in, group_len, \
                              kind, rows_per_split);                                               \
    }
DECODE_KERNEL(4, 1)
DECODE_KERNEL(4, 2)
DECODE_KERNEL(4, 4)
DECODE_KERNEL(4, 8)
DECODE_KERNEL(4, 16)
DECODE_KERNEL(8, 1)
DECODE_KERNEL(8, 2)
DECODE_KERNEL(8, 4)
DECODE_KERNEL(8, 8)
DECODE_KERNEL(8, 16)

// out[i] = sum over slices s (in order) of part[s * len + i].
extern "C" __global__ void gptq_splitk_reduce(const float* __restrict__ part, float* __restrict__ out,
                                              u32 splits, u64 len) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    float s = 0.0f;
    for (u32 p = 0; p < splits; ++p) s += part[(u64)p * len + i];
    out[i] = s;
}

// Prefill on the tensor cores: a 64x64 output tile per block of 4 warps (each 32x32), K in
// steps of 32. Activations are copied to shared memory as they are (16-bit), the weight tile
// is dequantized into shared memory once per step (half(scale * (q - zero)), as above), and
// mma.sync m16n8k16 multiplies with f32 accumulation, k in order. Needs K % 32 == 0.
// Fragment layouts: PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type".
#define MM_BM 64
#define MM_BN 64
#define MM_BK 32
#define MM_LD (MM_BK + 8)  // padded row (80 bytes): fragment loads hit 32 distinct banks

struct alignas(16) MmaTile {
    u16 v[MM_BM][MM_LD];
};

__device__ __forceinline__ void mma_16816(float* d, const u32* a, const u32* b, u32 kind) {
    if (kind) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
}

extern "C" __global__ void __launch_bounds__(128)
gptq_gemm_mma(const u16* __restrict__ x, const int* __restrict__ qweight, const int* __restrict__ qzeros,
              const u16* __restrict__ scales, const int* __restrict__ g_idx, float* __restrict__ out,
              u32 m, u32 n_out, u32 k_in, u32 group_len, u32 bits, u32 kind) {
    __shared__ MmaTile xs_t;  // [m][k]
    __shared__ MmaTile ws_t;  // [n][k]: column-major B
    u16 (*xs)[MM_LD] = xs_t.v;
    u16 (*ws)[MM_LD] = ws_t.v;
    const u32 tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5;
    const u32 wm = warp >> 1, wn = warp & 1u;
    const u32 gid = lane >> 2, tig = lane & 3u;
    const u32 m0 = blockIdx.y * MM_BM, n0 = blockIdx.x * MM_BN;
    const u32 pf = 32u / bits, mask = (1u << bits) - 1u;
    float acc[2][4][4];
#pragma unroll
    for (u32 i = 0; i < 2; ++i)
#pragma unroll
        for (u32 j = 0; j < 4; ++j)
#pragma unroll
            for (u32 e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    for (u32 k0 = 0; k0 < k_in; k0 += MM_BK) {
        for (u32 c = tid; c < MM_BM * 4u; c += 128u) {
            const u32 row = c >> 2, part = c & 3u;
            const u32 gm = m0 + row;
            U32x4 v = {0u, 0u, 0u, 0u};
            if (gm < m) v = *reinterpret_cast<const U32x4*>(x + (u64)gm * k_in + k0 + part * 8u);
            *reinterpret_cast<U32x4*>(&xs[row][part * 8u]) = v;
        }
        const u32 wrows = MM_BK / pf;
        for (u32 e = tid; e < wrows * MM_BN; e += 128u) {
            const u32 rr = e / MM_BN, nn = e % MM_BN;
            const u32 gn = n0 + nn, kk0 = rr * pf;
            if (gn < n_out) {
                const u32 word = (u32)qweight[(u64)(k0 / pf + rr) * n_out + gn];
                if (g_idx == 0) {
                    const u32 g = (k0 + kk0) / group_len;
                    const float s = half_to_f32(scales[(u64)g * n_out + gn], kind);
                    const float z = gptq_zero(qzeros, g, gn, n_out, bits);
                    for (u32 j = 0; j < pf; ++j)
                        ws[nn][kk0 + j] = f32_to_half(s * ((float)((word >> (bits * j)) & mask) - z), kind);
                } else {
                    for (u32 j = 0; j < pf; ++j) {
                        const u32 g = (u32)g_idx[k0 + kk0 + j];
                        const float s = half_to_f32(scales[(u64)g * n_out + gn], kind);
                        const float z = gptq_zero(qzeros, g, gn, n_out, bits);
                        ws[nn][kk0 + j] = f32_to_half(s * ((float)((word >> (bits * j)) & mask) - z), kind);
                    }
                }
            } else {
                for (u32 j = 0; j < pf; ++j) ws[nn][kk0 + j] = 0;
            }
        }
        __syncthreads();
#pragma unroll
        for (u32 ks = 0; ks < MM_BK; ks += 16u) {
            u32 a[2][4], b[4][2];
#pragma unroll
            for (u32 i = 0; i < 2; ++i) {
                const u32 r = wm * 32u + i * 16u + gid;
                a[i][0] = *reinterpret_cast<const u32*>(&xs[r][ks + tig * 2u]);
                a[i][1] = *reinterpret_cast<const u32*>(&xs[r + 8u][ks + tig * 2u]);
                a[i][2] = *reinterpret_cast<const u32*>(&xs[r][ks + tig * 2u + 8u]);
                a[i][3] = *reinterpret_cast<const u32*>(&xs[r + 8u][ks + tig * 2u + 8u]);
            }
#pragma unroll
            for (u32 j = 0; j < 4; ++j) {
                const u32 c = wn * 32u + j * 8u + gid;
                b[j][0] = *reinterpret_cast<const u32*>(&ws[c][ks + tig * 2u]);
                b[j][1] = *reinterpret_cast<const u32*>(&ws[c][ks + tig * 2u + 8u]);
            }
#pragma unroll
            for (u32 i = 0; i < 2; ++i)
#pragma unroll
                for (u32 j = 0; j < 4; ++j) mma_16816(acc[i][j], a[i], b[j], kind);
        }
        __syncthreads();
    }
#pragma unroll
    for (u32 i = 0; i < 2; ++i) {
#pragma unroll
        for (u32 j = 0; j < 4; ++j) {
            const u32 col = n0 + wn * 32u + j * 8u + tig * 2u;
#pragma unroll
            for (u32 h = 0; h < 2; ++h) {
                const u32 row = m0 + wm * 32u + i * 16u + gid + h * 8u;
                if (row >= m) continue;
                if (col < n_out) out[(u64)row * n_out + col] = acc[i][j][2 * h];
                if (col + 1 < n_out) out[(u64)row * n_out + col + 1] = acc[i][j][2 * h + 1];
            }
        }
    }
}

// Prefill fallback (K not a multiple of 32): 64x64 output tile per block of 256 threads on the
// CUDA cores, K in steps of 32. The activation
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
