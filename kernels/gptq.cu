// W4A16 / W8A16 linears straight from GPTQ v1 tensors (layout: src/export/gptq_v1.rs,
// docs/formats.md; facts from AutoGPTQ `qlinear_cuda_old.py` and vLLM
// `layers/quantization/gptq.py`):
//   qweight int32 [K/pf, N]   row r holds k = r*pf + j at bits*j (pf = 32/bits)
//   qzeros  int32 [G, N/pf]   zero - 1 of column n at bits*(n % pf) of word n/pf
//   scales  half  [G, N]
//   g_idx   int32 [K]         group of input k; null = k / group_len (sequential)
// Weights are dequantized in registers to half(scale * (q - zero)), exactly the weight
// `hy-quant dequantize` writes, and multiplied with f32 accumulation. Every sum runs in a
// fixed order (no float atomics), so results are deterministic on a given GPU.
//
// Two paths (chosen in src/backend/cuda/gptq_linear.rs, `gptq_matmul`):
// - decode, m <= 16 rows per launch, sequential groups: `gptq_gemv_stream_*` /
//   `gptq_gemv_ffma_*` (a ring of loads in flight per lane) or `gptq_gemv_*` (one step of
//   loads at a time), each streaming the packed weight once;
// - everything else (prefill, act-order): `gptq_dequantize_w*` writes the 16-bit weight (in
//   column chunks) and cuBLAS multiplies it.
//
// With GPTQ_EXPERIMENTS defined (the `gptq_experiments` module of src/backend/cuda/compile.rs,
// this file again) only the decode experiments are instantiated instead: see the end of the
// streaming kernel's section.

__device__ __forceinline__ float gptq_zero(const int* qzeros, u32 g, u32 n, u32 n_out, u32 bits) {
    const u32 pf = 32u / bits, mask = (1u << bits) - 1u;
    const u32 word = (u32)qzeros[(u64)g * (n_out / pf) + n / pf];
    // Loaders add the 1 back without masking (a stored 2^bits - 1 reads as 2^bits).
    return (float)(((word >> (bits * (n % pf))) & mask) + 1u);
}

struct alignas(16) U32x4 {
    u32 x, y, z, w;
};

struct alignas(8) U32x2 {
    u32 x, y;
};

// ------------------------------------------------------------------------------------------
// Decode: out[m, N] = x[m, K] . W^T for m <= MB (8 or 16), W never leaves registers. The host
// (src/backend/cuda/gptq_linear.rs) sends only sequential groups, K a multiple of one quad of
// packed rows (32 k for int4, 16 for int8), groups of whole quads and N a multiple of 32.
//
// Memory: a warp owns 32 output columns. Lane (gid = lane/4, tig = lane%4) loads 16 bytes of
// qweight: columns n..n+3 (n = 4*gid) of packed row 4*quad + tig. One warp load therefore
// covers 4 packed rows x 128 contiguous bytes, and a step of GV_UNROLL such loads (consecutive
// quads) is in flight per lane before the first is used, with the scales and zeros of any
// group starting in it. A block is GV_WARPS warps on the same 32 columns, each on its own run
// of whole steps of the block's K slice (blockIdx.y, quads_per_split quads); the slice of x
// (m rows) is staged in shared memory once per block while the first weights are in flight.
//
// Math: the tensor cores, mma.m16n8k16 with A = weights (16 columns x 16 k), B = x^T
// (16 k x 8 rows of x), f32 accumulators. The dot product does not care which k sits in which
// of the 16 k slots as long as A and B agree, so each lane feeds the k it loaded: the word of
// column c holds k = 8r..8r+7 (int4); dequantized as half pairs (k_i, k_{i+4}) it gives the
// lane's A registers for two k16 steps, and the lane reads x[gid][8r..8r+7] (16 bytes of
// shared memory) and permutes it (prmt) into the same pairs for B. For int8 a word holds
// k = 4r..4r+3, pairs (k_i, k_{i+2}), one k16 step. Tile t of the lane covers columns 4gid+2t
// (A row gid) and 4gid+2t+1 (A row gid+8). Fragment layouts: PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type". With A = weights, m <= 8 wastes only the unused
// B columns; 9..16 rows take a second mma per tile.
//
// Dequantization, bit-exact half(scale * (q - zero)):
// - int4: a nibble pair OR'ed into the mantissa of 1024.0 (f16) / 128.0 (bf16) gives the half2
//   (bias + q); fma(t, 1, -(bias + z)) = q - z exactly (small integer); fma(d, s, -0) =
//   s * (q - z) rounded once to half, as the f32 product rounded to half is (the f32 product
//   of an 8/11-bit scale and a 5-bit integer is exact). Two half2 FMAs per two weights.
//   (The magic-number int-to-half conversion is the one of FasterTransformer / exllama /
//   Marlin; the code here is our own.)
// - int8 (the bf16 mantissa cannot hold 128 + q for q < 256): byte into the mantissa of 2^23
//   (prmt), minus (2^23 + z), times s, all exact in f32, then one cvt.rn to a half pair.
// The per-column constants are rebuilt only when a group starts (once per step for int4 g128).
//
// Sums: per lane in k order (mma), per block over warps in warp order (shared memory), over
// the K slices in slice order: every block writes its slice sum to `part`, and the last block
// of a column tile to finish (an integer ticket in `counters`, reset by that block) adds the
// slices in order and writes `out`. No float atomics: the result does not depend on timing.
#define GV_WARPS 8
#define GV_UNROLL 4
#define GV_COLS 32

// qweight is read exactly once: keep it out of L1.
__device__ __forceinline__ U32x4 ld_stream_v4(const int* p) {
    U32x4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

// Another block's partial sums: from L2, never a stale L1 line.
__device__ __forceinline__ float ld_l2_f32(const float* p) {
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
    return v;
}

// The end of a decode launch. The block's column sums (red: [ways][MB][stride] floats in
// shared memory, summed over the ways in order) go to `out` when the grid has one K split,
// else to this split's slice of `part` [splits][m][n_out]; then the block takes a ticket for
// its column tile (`counters`), and the last one to finish adds the slices in split order and
// resets the ticket for the next launch. Columns n0 .. n0 + cols - 1, x rows 0 .. m - 1;
// `tid` / `threads` number the block's threads; `is_last` is a __shared__ flag.
template <u32 MB>
__device__ __forceinline__ void gemv_store_sums(const float* red, u32 ways, u32 stride, u32 m, u32 n0,
                                                u32 cols, u32 n_out, float* __restrict__ out,
                                                float* __restrict__ part, u32* __restrict__ counters,
                                                u32* is_last, u32 tid, u32 threads) {
    const u32 splits = gridDim.y;
    for (u32 i = tid; i < m * cols; i += threads) {
        const u32 b = i / cols, col = i % cols;
        float sum = 0.0f;
        for (u32 w = 0; w < ways; ++w) sum += red[(w * MB + b) * stride + col];
        if (splits == 1u) {
            out[(u64)b * n_out + n0 + col] = sum;
        } else {
            part[((u64)blockIdx.y * m + b) * n_out + n0 + col] = sum;
        }
    }
    if (splits == 1u) return;
    // Publish this slice, take a ticket; the last block of the column tile adds the slices.
    __threadfence();
    __syncthreads();
    if (tid == 0) *is_last = atomicAdd(&counters[blockIdx.x], 1u) == splits - 1u;
    __syncthreads();
    if (!*is_last) return;
    __threadfence();
    for (u32 i = tid; i < m * cols; i += threads) {
        const u32 b = i / cols, col = i % cols;
        float sum = 0.0f;
        for (u32 sp = 0; sp < splits; ++sp) sum += ld_l2_f32(part + ((u64)sp * m + b) * n_out + n0 + col);
        out[(u64)b * n_out + n0 + col] = sum;
    }
    if (tid == 0) counters[blockIdx.x] = 0u;  // ready for the next launch
}

template <u32 KIND>
__device__ __forceinline__ u32 hfma2(u32 a, u32 b, u32 c) {
    u32 d;
    if constexpr (KIND == 1u) {
        asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    } else {
        asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    }
    return d;
}

// {half(lo) in bits 0..15, half(hi) in bits 16..31}, round to nearest even.
template <u32 KIND>
__device__ __forceinline__ u32 pack_half2(float lo, float hi) {
    u32 d;
    if constexpr (KIND == 1u) {
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    } else {
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    }
    return d;
}

template <u32 KIND>
__device__ __forceinline__ void mma_16816(float* d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    if constexpr (KIND == 1u) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    } else {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
}

// Per-column constants of one group: int4 (half2 path) ca = {s, s}, cb = {-(bias + z)} x 2;
// int8 (f32 path) ca = s, cb = -(2^23 + z) as f32 bits.
template <u32 BITS, u32 KIND>
__device__ __forceinline__ void gemv_group_consts(U32x2 sraw, u32 zword, u32 zshift, u32* ca, u32* cb) {
    if constexpr (BITS == 4) {
        // Few instructions (a group starts every 4 quads at g128): byte permutes duplicate each
        // scale and the lane's 4 zero nibbles into both halves; -(bias + q + 1) with bias =
        // 128 (bf16) / 1024 (f16) is the bit pattern 0xC300 / 0xE400 plus q + 1.
        const u32 neg_bias = KIND == 1u ? 0xC301C301u : 0xE401E401u;
        const u32 z2 = __byte_perm(zword >> zshift, 0u, 0x1010u);  // {zeros 0..3} x 2
        ca[0] = __byte_perm(sraw.x, 0u, 0x1010u);
        ca[1] = __byte_perm(sraw.x, 0u, 0x3232u);
        ca[2] = __byte_perm(sraw.y, 0u, 0x1010u);
        ca[3] = __byte_perm(sraw.y, 0u, 0x3232u);
#pragma unroll
        for (u32 c = 0; c < 4; ++c) cb[c] = ((z2 >> (4u * c)) & 0x000f000fu) + neg_bias;
    } else {
        const u32 sbits[4] = {sraw.x & 0xffffu, sraw.x >> 16, sraw.y & 0xffffu, sraw.y >> 16};
#pragma unroll
        for (u32 c = 0; c < 4; ++c) {
            const u32 z = ((zword >> (zshift + BITS * c)) & ((1u << BITS) - 1u)) + 1u;
            ca[c] = __float_as_uint(half_to_f32((u16)sbits[c], KIND));
            cb[c] = __float_as_uint(-__uint_as_float(0x4b000000u + z));
        }
    }
}

// The PF weights of one word as PF/2 half pairs h[i] = {k_i, k_{i+PF/2}}.
template <u32 BITS, u32 KIND>
__device__ __forceinline__ void gemv_dequant_word(u32 w, u32 ca, u32 cb, u32 bias2, u32* h) {
    if constexpr (BITS == 4) {
        const u32 one2 = KIND == 1u ? 0x3f803f80u : 0x3c003c00u;
#pragma unroll
        for (u32 i = 0; i < 4; ++i) {
            const u32 t = ((w >> (4u * i)) & 0x000f000fu) | bias2;
            h[i] = hfma2<KIND>(hfma2<KIND>(t, one2, cb), ca, 0x80008000u);
        }
    } else {
        const float s = __uint_as_float(ca), nz = __uint_as_float(cb);
#pragma unroll
        for (u32 i = 0; i < 2; ++i) {
            const float lo = __uint_as_float(__byte_perm(w, 0x4b000000u, 0x7440u + i)) + nz;
            const float hi = __uint_as_float(__byte_perm(w, 0x4b000000u, 0x7442u + i)) + nz;
            h[i] = pack_half2<KIND>(lo * s, hi * s);
        }
    }
}

// The 4 words of one quad (the lane's 4 columns) dequantized: h[c] = gemv_dequant_word of column c.
template <u32 BITS, u32 KIND>
__device__ __forceinline__ void gemv_dequant_quad(U32x4 w, const u32* ca, const u32* cb, u32 bias2,
                                                  u32 (*h)[16u / BITS]) {
    gemv_dequant_word<BITS, KIND>(w.x, ca[0], cb[0], bias2, h[0]);
    gemv_dequant_word<BITS, KIND>(w.y, ca[1], cb[1], bias2, h[1]);
    gemv_dequant_word<BITS, KIND>(w.z, ca[2], cb[2], bias2, h[2]);
    gemv_dequant_word<BITS, KIND>(w.w, ca[3], cb[3], bias2, h[3]);
}

// One quad against 8 rows of x on tensor cores: xv the lane's PF halves of x row gid (B column
// gid), acc the two 16x8 C fragments (columns 4*gid + 2*t + ...) of those 8 rows. SUM_X: one
// more mma with all-ones A adds the same x to `sum_x` (element e: x row 2*tig + (e & 1)).
template <u32 BITS, u32 KIND, bool SUM_X = false>
__device__ __forceinline__ void gemv_mma_quad(const u32 (*h)[16u / BITS], const u32* xv, float (*acc)[4],
                                              float* sum_x = nullptr) {
    constexpr u32 KSTEPS = 32u / BITS / 4u;  // k16 steps per quad
#pragma unroll
    for (u32 s = 0; s < KSTEPS; ++s) {
        // B: {x_{2s}, x_{2s+PF/2}} and {x_{2s+1}, x_{2s+1+PF/2}}, the k of the A pairs.
        const u32 b0 = __byte_perm(xv[s], xv[s + KSTEPS], 0x5410u);
        const u32 b1 = __byte_perm(xv[s], xv[s + KSTEPS], 0x7632u);
#pragma unroll
        for (u32 t = 0; t < 2; ++t)
            mma_16816<KIND>(acc[t], h[2 * t][2 * s], h[2 * t + 1][2 * s], h[2 * t][2 * s + 1],
                            h[2 * t + 1][2 * s + 1], b0, b1);
        if constexpr (SUM_X) {
            const u32 one2 = KIND == 1u ? 0x3f803f80u : 0x3c003c00u;
            mma_16816<KIND>(sum_x, one2, one2, one2, one2, b0, b1);
        }
    }
}

template <u32 BITS, u32 MB, u32 KIND>
__device__ __forceinline__ void gptq_gemv(const u16* __restrict__ x, const int* __restrict__ qweight,
                                          const int* __restrict__ qzeros, const u16* __restrict__ scales,
                                          float* __restrict__ out, float* __restrict__ part,
                                          u32* __restrict__ counters, u32 m, u32 n_out, u32 k_in,
                                          u32 group_len, u32 quads_per_split) {
    constexpr u32 PF = 32u / BITS;   // k per word
    constexpr u32 KQ = 4u * PF;      // k per quad of packed rows
    constexpr u32 HP = PF / 2u;      // half pairs per word = x registers per lane and row
    constexpr u32 NB = MB / 8u;      // mma per A tile and k step (8 rows of x each)
    // The block's slice of x while the loop runs, then the per-warp sums.
    extern __shared__ __align__(16) unsigned char gv_smem[];
    u16* xs = reinterpret_cast<u16*>(gv_smem);
    float* red = reinterpret_cast<float*>(gv_smem);  // [GV_WARPS][MB][GV_COLS]
    __shared__ u32 is_last;

    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const u32 gid = lane >> 2, tig = lane & 3u;
    const u32 quads = k_in / KQ;
    const u32 q_lo = min(quads, blockIdx.y * quads_per_split);
    const u32 q_hi = min(quads, q_lo + quads_per_split);
    // Whole GV_UNROLL steps per warp (quads_per_split is a multiple of GV_UNROLL too), so that
    // with 4 quads per group (int4 g128) every step is exactly one group.
    const u32 per_warp = ((q_hi - q_lo + GV_WARPS - 1u) / GV_WARPS + GV_UNROLL - 1u) / GV_UNROLL * GV_UNROLL;
    const u32 qb = min(q_hi, q_lo + warp * per_warp), qe = min(q_hi, qb + per_warp);
    const u32 n0 = blockIdx.x * GV_COLS, n = n0 + 4u * gid;
    const u32 quads_per_group = group_len / KQ;
    const u32 zshift = BITS == 4 ? (n % 8u) * 4u : 0u;
    // x slice [m][xstride] in shared memory; a row pitch of KQ halves modulo 64 keeps the rows a
    // quarter (int4) / half (int8) warp reads in distinct banks.
    const u32 k_base = q_lo * KQ, k_len = (q_hi - q_lo) * KQ;
    const u32 xstride = ((k_len + 63u) & ~63u) + KQ;

    float acc[NB][2][4];
#pragma unroll
    for (u32 t = 0; t < 2; ++t)
#pragma unroll
        for (u32 bg = 0; bg < NB; ++bg)
#pragma unroll
            for (u32 e = 0; e < 4; ++e) acc[bg][t][e] = 0.0f;

    // 32-bit element offsets of the lane's current packed row (4*quad + tig) and group (the
    // host keeps every tensor under 2^32 elements).
    u32 w_off = (4u * qb + tig) * n_out + n;
    u32 g_next = (qb / quads_per_group + 1u) * quads_per_group;  // first quad of the next group
    u32 s_off = qb / quads_per_group * n_out + n;
    u32 z_off = qb / quads_per_group * (n_out / PF) + n / PF;
    U32x4 wq[GV_UNROLL];
    U32x2 sr[GV_UNROLL];
    u32 zr[GV_UNROLL];
    u32 new_group = 0;  // bit u: quad q + u starts a group (or the warp's range)
    u32 ca[4], cb[4];
    // The int4 magic bias pair (see gemv_dequant_word). Built from a kernel argument so that
    // ptxas keeps it in one register instead of rematerializing a constant at every use.
    const u32 bias2 = (KIND == 1u ? 0x43004300u : 0x64006400u) | (group_len >> 31);

    // One step: GV_UNROLL quads, every load issued before any is used (the tail test is
    // uniform per warp).
    auto load_step = [&](u32 q) {
        new_group = q == qb ? 1u : 0u;
#pragma unroll
        for (u32 u = 0; u < GV_UNROLL; ++u) {
            const u32 quad = q + u;
            if (quad >= qe) break;
            if (quad >= g_next) {
                g_next += quads_per_group;
                s_off += n_out;
                z_off += n_out / PF;
                new_group |= 1u << u;
            }
            wq[u] = ld_stream_v4(qweight + w_off);
            w_off += 4u * n_out;
            if (new_group & (1u << u)) {
                sr[u] = *reinterpret_cast<const U32x2*>(scales + s_off);
                zr[u] = (u32)qzeros[z_off];
            }
        }
    };
    load_step(qb);
    pdl_wait();  // x, part and counters belong to the kernels before (see common.cuh)

    // Stage x rows 0..m-1 of the block's k range while the first weights are on their way:
    // thread t copies the 16-byte chunks t, t + 256, ... of the [m][k_len / 8] chunks, four
    // loads in flight, (row, chunk) stepped without dividing.
    {
        constexpr u32 THREADS = GV_WARPS * 32u;
        const u32 per_row = k_len / 8u, db = THREADS / per_row, dc = THREADS % per_row;
        u32 b = threadIdx.x / per_row, c = threadIdx.x % per_row;
        while (b < m) {
            U32x4 v[4];
            u32 lb = b, lc = c;
#pragma unroll
            for (u32 j = 0; j < 4; ++j) {
                if (lb < m) v[j] = *reinterpret_cast<const U32x4*>(x + (u64)lb * k_in + k_base + lc * 8u);
                lb += db;
                lc += dc;
                if (lc >= per_row) {
                    lc -= per_row;
                    ++lb;
                }
            }
#pragma unroll
            for (u32 j = 0; j < 4; ++j) {
                if (b < m) *reinterpret_cast<U32x4*>(xs + b * xstride + c * 8u) = v[j];
                b += db;
                c += dc;
                if (c >= per_row) {
                    c -= per_row;
                    ++b;
                }
            }
        }
    }
    __syncthreads();

    // Lanes past row m-1 of x read row m-1: they only feed output rows that are never written.
    u32 x_off[NB];
#pragma unroll
    for (u32 bg = 0; bg < NB; ++bg) x_off[bg] = min(bg * 8u + gid, m - 1u) * xstride + (4u * qb + tig) * PF - k_base;

    for (u32 q = qb; q < qe; q += GV_UNROLL) {
        if (q != qb) load_step(q);
#pragma unroll
        for (u32 u = 0; u < GV_UNROLL; ++u) {
            if (q + u >= qe) break;
            if (new_group & (1u << u)) gemv_group_consts<BITS, KIND>(sr[u], zr[u], zshift, ca, cb);
            u32 h[4][HP];
            gemv_dequant_quad<BITS, KIND>(wq[u], ca, cb, bias2, h);
#pragma unroll
            for (u32 bg = 0; bg < NB; ++bg) {
                u32 xv[HP];
                if constexpr (BITS == 4) {
                    const U32x4 v = *reinterpret_cast<const U32x4*>(xs + x_off[bg]);
                    xv[0] = v.x;
                    xv[1] = v.y;
                    xv[2] = v.z;
                    xv[3] = v.w;
                } else {
                    const U32x2 v = *reinterpret_cast<const U32x2*>(xs + x_off[bg]);
                    xv[0] = v.x;
                    xv[1] = v.y;
                }
                x_off[bg] += 4u * PF;
                gemv_mma_quad<BITS, KIND>(h, xv, acc[bg]);
            }
        }
    }
    __syncthreads();  // every warp is done with xs: the same memory now takes the sums

    // C fragment: acc[bg][t][e] is x row bg*8 + 2*tig + (e & 1), column 4*gid + 2*t + (e >> 1).
#pragma unroll
    for (u32 t = 0; t < 2; ++t)
#pragma unroll
        for (u32 bg = 0; bg < NB; ++bg)
#pragma unroll
            for (u32 e = 0; e < 4; ++e)
                red[(warp * MB + bg * 8u + 2u * tig + (e & 1u)) * GV_COLS + 4u * gid + 2u * t + (e >> 1)] =
                    acc[bg][t][e];
    __syncthreads();
    gemv_store_sums<MB>(red, GV_WARPS, GV_COLS, m, n0, GV_COLS, n_out, out, part, counters, &is_last, threadIdx.x,
                        blockDim.x);
}

#define GEMV_KERNEL(BITS, MB, KIND, NAME)                                                          \
    extern "C" __global__ void __launch_bounds__(GV_WARPS * 32) gptq_gemv_w##BITS##_m##MB##_##NAME( \
        const u16* x, const int* qweight, const int* qzeros, const u16* scales, float* out,        \
        float* part, u32* counters, u32 m, u32 n_out, u32 k_in, u32 group_len, u32 quads_per_split) { \
        gptq_gemv<BITS, MB, KIND>(x, qweight, qzeros, scales, out, part, counters, m, n_out, k_in, \
                                  group_len, quads_per_split);                                      \
    }
#ifndef GPTQ_EXPERIMENTS
GEMV_KERNEL(4, 8, 0, f16)
GEMV_KERNEL(4, 8, 1, bf16)
GEMV_KERNEL(4, 16, 0, f16)
GEMV_KERNEL(4, 16, 1, bf16)
GEMV_KERNEL(8, 8, 0, f16)
GEMV_KERNEL(8, 8, 1, bf16)
GEMV_KERNEL(8, 16, 0, f16)
GEMV_KERNEL(8, 16, 1, bf16)
#endif

// ------------------------------------------------------------------------------------------
// Decode, streaming variant (`gptq_gemv_stream_*`): the same lane mapping, dequantization and
// mma math as `gptq_gemv`, reorganized so that every warp keeps weight loads in flight all the
// time. Why `gptq_gemv` stays near 1.3 TB/s at m = 1 on an H200: a warp issues one step of
// GV_UNROLL loads, waits for all of them, computes, and only then issues the next step, so a
// warp has 2 KiB in flight at best and nothing while it computes; its blocks live for 1-2
// steps, so the first-load latency, the x staging and the block reduction are paid every few
// KiB. Little's law wants ~4.3 TB/s x ~0.7 us / 132 SMs ~ 23 KB in flight per SM, all the time.
//
// Here:
// - A ring of U slots per lane (U = 4 or 8 quads, 16 bytes each): the slot of quad q is
//   refilled with quad q + U as soon as its words are dequantized, before the mma, so a lane
//   has U loads (64 / 128 bytes) in flight through the whole K range, across group boundaries
//   (the scales and zeros of a group travel in the slot of its first quad).
// - A block is GS_TILES = 4 warps side by side (128 output columns, so every packed row the
//   block reads is 512 contiguous bytes), times blockDim.y warps along K (KW) that split the
//   block's K slice; no per-step barrier, only one at the start (x) and one at the end (sums).
// - The host sizes the K slices so that the grid is about one wave of resident blocks: long
//   lived warps, one ramp-up per warp, few split partial sums.
// - Few instructions per weight, because at m = 1 the H200 is close to issue-bound: it must
//   dequantize ~8.6 G weights per us at roofline (4.3 TB/s of int4) against ~33 G thread
//   instructions per us (132 SMs x 128 lanes x ~1.98 GHz), so ~3.9 instructions per weight
//   at most, ~2.5 to leave slack. The bit-exact int4 dequantization alone is ~1.9 (a shift
//   and a lop3 per nibble pair, then add and multiply, as in gemv_dequant_word); one mma per
//   256 weights is nearly free, while f32 FMAs would add ~2 more (widen + FMA, see the
//   CUDA-core variant below). So: the ring's bookkeeping is a countdown and pointer steps,
//   whole turns skip the range tests, the group constants are byte permutes, and x comes by
//   ld.shared from a shared-space address (ptxas SASS: ~95 instructions per quad of 32
//   weights at int4 m <= 8, group constants included at g128).
// Sums: per lane in k order (mma), over the KW warps in order (shared memory), over the K
// slices in slice order by the last block of the column tile (ticket), as in `gptq_gemv`.
// N only needs to be a multiple of 32: warps past the last column tile load nothing.
#define GS_TILES 4
#define GS_COLS (GS_TILES * GV_COLS)

// CUDA-core math for 1..4 rows (FFMA = true; MB = 1, 2 with a ring of 4 or 8, MB = 4 with 4):
// each lane multiplies its 4 columns x PF k of a quad with x in f32 FMAs (weights widened
// from the same exact half pairs), and the 4 lanes of a column group (tig, 4 packed rows each
// quad) are added by two xor shuffles at the end (fixed butterfly order). About 2 more instructions per weight than the
// mma path at m = 1 (widening + FMA instead of a quarter-used mma), so it only wins if the
// mma path is limited by something other than issue; the sweep decides.
template <u32 BITS, u32 KIND>
__device__ __forceinline__ void half2_to_f32(u32 h, float* lo, float* hi) {
    if constexpr (KIND == 1u) {
        *lo = __uint_as_float(h << 16);
        *hi = __uint_as_float(h & 0xffff0000u);
    } else {
        *lo = f16_to_f32((u16)(h & 0xffffu));
        *hi = f16_to_f32((u16)(h >> 16));
    }
}

// x of one quad for one row: the PF halves of the lane's packed row, as HP half pairs.
template <u32 HP>
__device__ __forceinline__ void lds_x(u32 addr, u32* xv) {
    if constexpr (HP == 4) {
        asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                     : "=r"(xv[0]), "=r"(xv[1]), "=r"(xv[2]), "=r"(xv[3])
                     : "r"(addr));
    } else {
        asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(xv[0]), "=r"(xv[1]) : "r"(addr));
    }
}

// One quad of one x row on CUDA cores: h[c][i] = {k_i, k_{i+HP}} of column c
// (gemv_dequant_word), xv the row's PF halves of the lane's packed row; acc[c] += in k order
// i, i + HP.
template <u32 BITS, u32 KIND>
__device__ __forceinline__ void gemv_ffma_quad(const u32 (*h)[16u / BITS], const u32* xv, float* acc) {
    constexpr u32 PF = 32u / BITS, HP = PF / 2u;
    float xf[PF];
#pragma unroll
    for (u32 j = 0; j < HP; ++j) half2_to_f32<BITS, KIND>(xv[j], &xf[2 * j], &xf[2 * j + 1]);
#pragma unroll
    for (u32 c = 0; c < 4; ++c)
#pragma unroll
        for (u32 i = 0; i < HP; ++i) {
            float lo, hi;
            half2_to_f32<BITS, KIND>(h[c][i], &lo, &hi);
            acc[c] = fmaf(lo, xf[i], acc[c]);
            acc[c] = fmaf(hi, xf[i + HP], acc[c]);
        }
}

// Ints from qweight to a lane's first load (packed row 4 * qb + tig, columns n..n+3). GPTQ
// layout: [K/PF, N], so a block's K slice is 512-byte pieces of rows 4N bytes apart. TILED (an
// experiment, see GEMV_STREAM_EXPERIMENTS): the copy `gptq_tile_qweight` writes, where column
// tile t (the 128 columns of block t) holds its packed row r at ints (t * K/PF + r) * 128, so
// the block's whole K slice is one contiguous run (2 KiB per quad across its 4 warps).
template <u32 PF, bool TILED>
__device__ __forceinline__ u64 stream_weight_offset(u32 qb, u32 tig, u32 n, u32 n_out, u32 k_in) {
    const u32 row = 4u * qb + tig;
    if constexpr (TILED) {
        return ((u64)(n / GS_COLS) * (k_in / PF) + row) * GS_COLS + n % GS_COLS;
    } else {
        return (u64)row * n_out + n;
    }
}

// x rows 0..m-1, k = k_base .. k_base + k_len - 1 (a multiple of 8), into xs [m][xstride]
// halves: thread `tid` of `threads` copies the 16-byte chunks tid, tid + threads, ...
__device__ __forceinline__ void stage_x_rows(const u16* __restrict__ x, u16* xs, u32 m, u32 k_in, u32 k_base,
                                             u32 k_len, u32 xstride, u32 tid, u32 threads) {
    const u32 per_row = k_len / 8u;
    for (u32 i = tid; i < m * per_row; i += threads) {
        const u32 b = i / per_row, c = i % per_row;
        *reinterpret_cast<U32x4*>(xs + b * xstride + c * 8u) =
            *reinterpret_cast<const U32x4*>(x + (u64)b * k_in + k_base + c * 8u);
    }
}

// L2 prefetch of one lane's 16 bytes of a later quad (a hint: nothing comes back to the lane).
__device__ __forceinline__ void prefetch_l2(const int* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// TILED: qweight is the column-tiled copy (stream_weight_offset); the math is unchanged.
// PFD > 0 (an experiment): each lane also prefetches into L2 the quad PFD ahead of the one it
// loads (the first PFD before anything else), so up to PFD quads per lane are in flight
// between DRAM and L2 without costing registers; the ring's loads then mostly hit L2.
// READONLY (a benchmark, never a result): the same grid, lanes, loads and sums, but the math
// is an XOR of the loaded words, so its time is what the loads alone cost this layout.
// FOLD (an experiment; int4, tensor cores, MB = 8): the asynchronous kernel's folded math on
// this kernel's loads. Per pair of weights only the magic-number lop3: the mma sums
// (bias + q) * x over a group in f32, a second mma with all-ones A sums x, and at the group's
// end s * (sum - (bias + z) * sum_x) joins the lane's total. About 40% fewer instructions per
// weight; the weights are never rounded to half(s * (q - z)), so the result is the exact
// product to f32 rounding plus the bias cancellation (the host allows it where
// group_len * bias <= 2^17, `fold_fits`), not bit-identical to the production kernel.
template <u32 BITS, u32 MB, u32 KIND, u32 U, bool FFMA, bool TILED, u32 PFD = 0u, bool READONLY = false,
          bool FOLD = false>
__device__ __forceinline__ void gptq_gemv_stream(const u16* __restrict__ x, const int* __restrict__ qweight,
                                                 const int* __restrict__ qzeros, const u16* __restrict__ scales,
                                                 float* __restrict__ out, float* __restrict__ part,
                                                 u32* __restrict__ counters, u32 m, u32 n_out, u32 k_in,
                                                 u32 group_len, u32 quads_per_split) {
    constexpr u32 PF = 32u / BITS, KQ = 4u * PF, HP = PF / 2u;
    constexpr u32 NB = FFMA ? 1u : MB / 8u;  // mma per A tile and k step
    constexpr u32 XR = FFMA ? MB : NB;       // x offsets a lane walks
    extern __shared__ __align__(16) unsigned char gs_smem[];
    u16* xs = reinterpret_cast<u16*>(gs_smem);
    float* red = reinterpret_cast<float*>(gs_smem);  // [KW][MB][GS_COLS]
    __shared__ u32 is_last;

    const u32 lane = threadIdx.x & 31u, tile = threadIdx.x >> 5, kw = threadIdx.y, n_kw = blockDim.y;
    const u32 gid = lane >> 2, tig = lane & 3u;
    const u32 threads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
    const u32 quads = k_in / KQ;
    const u32 q_lo = min(quads, blockIdx.y * quads_per_split);
    const u32 q_hi = min(quads, q_lo + quads_per_split);
    const u32 per_warp = (q_hi - q_lo + n_kw - 1u) / n_kw;
    const u32 n0 = (blockIdx.x * GS_TILES + tile) * GV_COLS, n = n0 + 4u * gid;
    const bool active = n0 < n_out;  // warp-uniform
    const u32 qb = min(q_hi, q_lo + kw * per_warp), qe = active ? min(q_hi, qb + per_warp) : qb;
    const u32 quads_per_group = group_len / KQ;
    const u32 zshift = BITS == 4 ? (n % 8u) * 4u : 0u;
    const u32 k_base = q_lo * KQ, k_len = (q_hi - q_lo) * KQ;
    const u32 xstride = ((k_len + 63u) & ~63u) + KQ;  // bank spread as in gptq_gemv

    float acc[NB][2][4];
#pragma unroll
    for (u32 t = 0; t < 2; ++t)
#pragma unroll
        for (u32 bg = 0; bg < NB; ++bg)
#pragma unroll
            for (u32 e = 0; e < 4; ++e) acc[bg][t][e] = 0.0f;
    float accf[MB][4];  // FFMA: x row b, column 4*gid + c
#pragma unroll
    for (u32 b = 0; b < MB; ++b)
#pragma unroll
        for (u32 c = 0; c < 4; ++c) accf[b][c] = 0.0f;

    // Load side of the ring, kept to a few instructions per quad (the kernel is close to
    // issue-bound at m = 1): 64-bit pointers stepped by a constant, a countdown of the loads
    // left in the warp's range and in the current group, a flag per slot.
    const u64 w_step = TILED ? 4ull * GS_COLS : 4ull * n_out;
    const int* wp = qweight + (active ? stream_weight_offset<PF, TILED>(qb, tig, n, n_out, k_in) : 0ull);
    const u16* sp = scales + (u64)(qb / quads_per_group) * n_out + n;
    const int* zp = qzeros + (u64)(qb / quads_per_group) * (n_out / PF) + n / PF;
    u32 loads_left = qe - qb;
    u32 group_left = quads_per_group - qb % quads_per_group;  // loads before the next group
    U32x4 wq[U];
    U32x2 sr[U];
    u32 zr[U];
    bool fresh[U];  // the quad in slot u starts a group (or the warp's range): new constants
    u32 ca[4], cb[4];
    const u32 bias2 = (KIND == 1u ? 0x43004300u : 0x64006400u) | (group_len >> 31);

    // Slot u (a constant after unrolling) takes the next quad; CHECKED: the warp may have none.
    auto load_slot = [&](u32 u, bool first, bool checked) {
        if (checked && loads_left == 0u) return;
        --loads_left;
        if (group_left == 0u) {
            group_left = quads_per_group;
            sp += n_out;
            zp += n_out / PF;
            first = true;
        }
        --group_left;
        wq[u] = ld_stream_v4(wp);
        if constexpr (PFD > 0u) {
            if (loads_left >= PFD) prefetch_l2(wp + PFD * w_step);
        }
        wp += w_step;
        if (first) {
            sr[u] = *reinterpret_cast<const U32x2*>(sp);
            zr[u] = (u32)*zp;
        }
        fresh[u] = first;
    };
    if constexpr (PFD > U) {
        // The quads the ring's first loads do not prefetch (they prefetch U .. U + PFD - 1).
        for (u32 j = U; j < min(PFD, loads_left); ++j) prefetch_l2(wp + j * w_step);
    }
#pragma unroll
    for (u32 u = 0; u < U; ++u) load_slot(u, u == 0u, true);
    pdl_wait();  // x, part and counters belong to the kernels before (see common.cuh)

    // x rows 0..m-1 of the block's K slice into shared memory while the ring fills.
    stage_x_rows(x, xs, m, k_in, k_base, k_len, xstride, tid, threads);
    __syncthreads();

    // Shared-space byte addresses of the lane's x: mma: x row bg*8 + gid (B column gid);
    // FFMA: x row bg. Rows past m-1 read row m-1: they only feed output rows never written.
    u32 x_addr[XR];
#pragma unroll
    for (u32 bg = 0; bg < XR; ++bg)
        x_addr[bg] = (u32)__cvta_generic_to_shared(xs) +
                     2u * (min(FFMA ? bg : bg * 8u + gid, m - 1u) * xstride + (4u * qb + tig) * PF - k_base);

    // One quad from slot u; the slot is refilled (with the quad U further) as soon as its
    // words are dequantized.
    u32 xor_sum = 0u;  // READONLY
    // FOLD: tot the scaled sums of the finished groups, sum_x the group's sums of x, sf / zf
    // its scales and bias + zeros (column 4*gid + c); acc holds the group's sums.
    float tot[2][4], sum_x[4], sf[4], zf[4];
    if constexpr (FOLD) {
        static_assert(BITS == 4u && MB == 8u && !FFMA, "the folded math is int4, tensor cores, 8 rows");
#pragma unroll
        for (u32 e = 0; e < 4; ++e) {
            tot[0][e] = tot[1][e] = sum_x[e] = 0.0f;
            sf[e] = zf[e] = 0.0f;
        }
    }
    // FOLD: the finished group into tot (harmless before the first: everything is zero).
    auto fold_flush = [&]() {
#pragma unroll
        for (u32 t = 0; t < 2; ++t)
#pragma unroll
            for (u32 e = 0; e < 4; ++e) {
                const u32 c = 2u * t + (e >> 1);
                tot[t][e] = fmaf(sf[c], fmaf(-zf[c], sum_x[e & 1u], acc[0][t][e]), tot[t][e]);
                acc[0][t][e] = 0.0f;
            }
#pragma unroll
        for (u32 e = 0; e < 4; ++e) sum_x[e] = 0.0f;
    };
    auto consume = [&](u32 u, bool refill_checked) {
        if constexpr (READONLY) {
            xor_sum ^= wq[u].x ^ wq[u].y ^ wq[u].z ^ wq[u].w ^ (fresh[u] ? sr[u].x ^ zr[u] : 0u);
            load_slot(u, false, refill_checked);
            return;
        }
        if constexpr (FOLD) {
            if (fresh[u]) {
                fold_flush();
                const float bias = KIND == 1u ? 128.0f : 1024.0f;
                const u32 z4 = zr[u] >> zshift;  // the lane's 4 stored zeros (z - 1)
                const u32 sw[2] = {sr[u].x, sr[u].y};
#pragma unroll
                for (u32 c = 0; c < 4; ++c) {
                    sf[c] = half_to_f32((u16)(sw[c / 2u] >> (16u * (c % 2u))), KIND);
                    zf[c] = bias + (float)(((z4 >> (4u * c)) & 15u) + 1u);
                }
            }
            const u32 words[4] = {wq[u].x, wq[u].y, wq[u].z, wq[u].w};
            u32 h[4][HP];
#pragma unroll
            for (u32 c = 0; c < 4; ++c)
#pragma unroll
                for (u32 i = 0; i < HP; ++i) h[c][i] = ((words[c] >> (4u * i)) & 0x000f000fu) | bias2;
            load_slot(u, false, refill_checked);
            u32 xv[HP];
            lds_x<HP>(x_addr[0], xv);
            x_addr[0] += 2u * 4u * PF;
            gemv_mma_quad<BITS, KIND, true>(h, xv, acc[0], sum_x);
            return;
        }
        if (fresh[u]) gemv_group_consts<BITS, KIND>(sr[u], zr[u], zshift, ca, cb);
        u32 h[4][HP];
        gemv_dequant_quad<BITS, KIND>(wq[u], ca, cb, bias2, h);
        load_slot(u, false, refill_checked);
#pragma unroll
        for (u32 bg = 0; bg < XR; ++bg) {
            u32 xv[HP];
            lds_x<HP>(x_addr[bg], xv);
            x_addr[bg] += 2u * 4u * PF;
            if constexpr (FFMA) {
                gemv_ffma_quad<BITS, KIND>(h, xv, accf[bg]);
            } else {
                gemv_mma_quad<BITS, KIND>(h, xv, acc[bg]);
            }
        }
    };

    // Whole turns whose refills are all in range need no per-quad range tests.
    u32 q0 = qb;
    for (; q0 + 2u * U <= qe; q0 += U) {
#pragma unroll
        for (u32 u = 0; u < U; ++u) consume(u, false);
    }
    for (; q0 < qe; q0 += U) {
#pragma unroll
        for (u32 u = 0; u < U; ++u) {
            if (q0 + u >= qe) break;
            consume(u, true);
        }
    }
    __syncthreads();  // xs is free: the same memory takes the per-warp sums
    if constexpr (READONLY) acc[0][0][0] = accf[0][0] = __uint_as_float(xor_sum);
    if constexpr (FOLD) {
        fold_flush();
#pragma unroll
        for (u32 t = 0; t < 2; ++t)
#pragma unroll
            for (u32 e = 0; e < 4; ++e) acc[0][t][e] = tot[t][e];
    }

    if constexpr (FFMA) {
        // The 4 lanes of a column group hold different packed rows of the same columns.
#pragma unroll
        for (u32 b = 0; b < MB; ++b)
#pragma unroll
            for (u32 c = 0; c < 4; ++c) {
                float v = accf[b][c];
                v += __shfl_xor_sync(0xffffffffu, v, 1);
                v += __shfl_xor_sync(0xffffffffu, v, 2);
                if (tig == 0u) red[(kw * MB + b) * GS_COLS + tile * GV_COLS + 4u * gid + c] = v;
            }
    } else {
        // C fragment: acc[bg][t][e] is x row bg*8 + 2*tig + (e & 1), column 4*gid + 2*t + (e >> 1).
#pragma unroll
        for (u32 t = 0; t < 2; ++t)
#pragma unroll
            for (u32 bg = 0; bg < NB; ++bg)
#pragma unroll
                for (u32 e = 0; e < 4; ++e)
                    red[(kw * MB + bg * 8u + 2u * tig + (e & 1u)) * GS_COLS + tile * GV_COLS + 4u * gid + 2u * t +
                        (e >> 1)] = acc[bg][t][e];
    }
    __syncthreads();
    const u32 nb0 = blockIdx.x * GS_COLS;
    gemv_store_sums<MB>(red, n_kw, GS_COLS, m, nb0, min(GS_COLS, n_out - nb0), n_out, out, part, counters,
                        &is_last, tid, threads);
}

// 256 threads at most (GS_TILES warps x KW <= 2), so ptxas may use more than 128 registers
// (the ring, the accumulators of 16 rows) without spilling; 3 blocks of 128 threads per SM at
// up to 168 registers still keep 48 KiB of weights in flight per SM.
#define GEMV_STREAM_KERNEL(BITS, MB, KIND, U, FFMA, PREFIX, NAME)                                       \
    extern "C" __global__ void __launch_bounds__(256) PREFIX##_w##BITS##_m##MB##_u##U##_##NAME(         \
        const u16* x, const int* qweight, const int* qzeros, const u16* scales, float* out,            \
        float* part, u32* counters, u32 m, u32 n_out, u32 k_in, u32 group_len, u32 quads_per_split) {   \
        gptq_gemv_stream<BITS, MB, KIND, U, FFMA, false>(x, qweight, qzeros, scales, out, part, counters, \
                                                         m, n_out, k_in, group_len, quads_per_split);       \
    }
#define GEMV_STREAM_BITS(BITS)                                                  \
    GEMV_STREAM_KERNEL(BITS, 8, 0, 4, false, gptq_gemv_stream, f16)             \
    GEMV_STREAM_KERNEL(BITS, 8, 1, 4, false, gptq_gemv_stream, bf16)            \
    GEMV_STREAM_KERNEL(BITS, 8, 0, 8, false, gptq_gemv_stream, f16)             \
    GEMV_STREAM_KERNEL(BITS, 8, 1, 8, false, gptq_gemv_stream, bf16)            \
    GEMV_STREAM_KERNEL(BITS, 16, 0, 8, false, gptq_gemv_stream, f16)            \
    GEMV_STREAM_KERNEL(BITS, 16, 1, 8, false, gptq_gemv_stream, bf16)           \
    GEMV_STREAM_KERNEL(BITS, 1, 0, 4, true, gptq_gemv_ffma, f16)                \
    GEMV_STREAM_KERNEL(BITS, 1, 1, 4, true, gptq_gemv_ffma, bf16)               \
    GEMV_STREAM_KERNEL(BITS, 1, 0, 8, true, gptq_gemv_ffma, f16)                \
    GEMV_STREAM_KERNEL(BITS, 1, 1, 8, true, gptq_gemv_ffma, bf16)               \
    GEMV_STREAM_KERNEL(BITS, 2, 0, 4, true, gptq_gemv_ffma, f16)                \
    GEMV_STREAM_KERNEL(BITS, 2, 1, 4, true, gptq_gemv_ffma, bf16)               \
    GEMV_STREAM_KERNEL(BITS, 2, 0, 8, true, gptq_gemv_ffma, f16)                \
    GEMV_STREAM_KERNEL(BITS, 2, 1, 8, true, gptq_gemv_ffma, bf16)               \
    GEMV_STREAM_KERNEL(BITS, 4, 0, 4, true, gptq_gemv_ffma, f16)                \
    GEMV_STREAM_KERNEL(BITS, 4, 1, 4, true, gptq_gemv_ffma, bf16)
// ------------------------------------------------------------------------------------------
// Decode, asynchronous variant (`gptq_gemv_async_w4_m8_d<D>[_fold]_{f16,bf16}`, an experiment:
// in the `gptq_experiments` module only), int4 and up to 8 rows of x: the streaming kernel's lane mapping, block shape, grid and split-K sums, changed
// where the Nsight Compute profile (docs/cuda.md, "Profiled") showed the streaming kernel
// losing time: too few bytes in flight per SM (its register ring costs 122 registers, so only
// 16 warps fit) and ~3 instructions per weight on a long dependency chain.
// - The ring lives in shared memory, filled by cp.async: per lane and quad 16 bytes of qweight,
//   and in a second ring the 8 bytes of scales and the zero word of a group, in the slot of the
//   group's first quad. D quads are in flight per lane without costing registers. Each lane
//   reads back only what it copied itself, so cp.async.wait_group alone orders it (no barrier).
// - Scales are applied once per group, not per weight: the tensor cores sum (q - z) * x over
//   one group in f32 (q - z an exact small integer as a half), then the lane adds s * that sum
//   to its running total. One multiply per weight less, and the weight is never rounded to
//   half(s * (q - z)), so the result equals dequantize-then-multiply up to rounding (f32
//   order and the weight's half rounding), not bit for bit.
// - FOLD: the zero leaves the loop too. The mma sums (bias + q) * x, with (bias + q) the exact
//   half that the magic-number trick makes from a nibble (bias = 1024 for f16, 128 for bf16),
//   and a second mma with all-ones A sums x over the same k slots; at the end of a group
//   (bias + z) * sum(x) is subtracted. Per pair of weights: a shift and a lop3, nothing else.
//   Cost: the cancellation of the bias term, ~bias * 2^-24 relative to sum |x| (f32, exact
//   products), well under the half rounding of a dequantized weight (2^-9 for bf16).
// - x is staged with every 8 k permuted to the half pairs (k_i, k_{i+4}) the A fragments hold,
//   so B comes straight from one ld.shared.v4 (no prmt per mma).
// Sums: per lane in k order within a group (mma), groups in order, then as `gptq_gemv_stream`:
// deterministic.
__device__ __forceinline__ void cp_async16(u32 dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async8(u32 dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async4(u32 dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <u32 N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
__device__ __forceinline__ U32x4 lds_v4(u32 addr) {
    U32x4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(addr));
    return v;
}

// The dynamic shared memory of `gptq_gemv_async` (the host mirrors it, `async_smem_bytes`):
// two rings of D x threads x 16 bytes, then x [m][xstride] halves. The per-warp sums reuse the
// rings at the end.
template <u32 KIND, u32 D, bool FOLD>
__device__ __forceinline__ void gptq_gemv_async(const u16* __restrict__ x, const int* __restrict__ qweight,
                                                const int* __restrict__ qzeros, const u16* __restrict__ scales,
                                                float* __restrict__ out, float* __restrict__ part,
                                                u32* __restrict__ counters, u32 m, u32 n_out, u32 k_in,
                                                u32 group_len, u32 quads_per_split) {
    constexpr u32 PF = 8u, KQ = 32u;
    extern __shared__ __align__(16) unsigned char ga_smem[];
    __shared__ u32 is_last;

    const u32 lane = threadIdx.x & 31u, tile = threadIdx.x >> 5, kw = threadIdx.y, n_kw = blockDim.y;
    const u32 gid = lane >> 2, tig = lane & 3u;
    const u32 threads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
    const u32 quads = k_in / KQ;
    const u32 q_lo = min(quads, blockIdx.y * quads_per_split);
    const u32 q_hi = min(quads, q_lo + quads_per_split);
    const u32 per_warp = (q_hi - q_lo + n_kw - 1u) / n_kw;
    const u32 n0 = (blockIdx.x * GS_TILES + tile) * GV_COLS, n = n0 + 4u * gid;
    const bool active = n0 < n_out;  // warp-uniform
    const u32 qb = min(q_hi, q_lo + kw * per_warp), qe = active ? min(q_hi, qb + per_warp) : qb;
    const u32 quads_per_group = group_len / KQ;
    const u32 zshift = (n % 8u) * 4u;
    const u32 k_base = q_lo * KQ, k_len = (q_hi - q_lo) * KQ;
    const u32 xstride = ((k_len + 63u) & ~63u) + KQ;  // bank spread as in gptq_gemv

    const u32 slot_step = threads * 16u;
    const u32 ring_w = (u32)__cvta_generic_to_shared(ga_smem) + tid * 16u;
    const u32 ring_s = ring_w + D * slot_step;
    u16* xs = reinterpret_cast<u16*>(ga_smem + 2u * D * slot_step);
    float* red = reinterpret_cast<float*>(ga_smem);  // [KW][8][GS_COLS], after the loop

    // Load side: as the streaming kernel's, each quad one commit group (empty past the end, so
    // that wait_group<D - 1> always means "the oldest slot has landed").
    const u64 w_step = 4ull * n_out;
    const int* wp = qweight + (active ? (u64)(4u * qb + tig) * n_out + n : 0ull);
    const u16* sp = scales + (u64)(qb / quads_per_group) * n_out + n;
    const int* zp = qzeros + (u64)(qb / quads_per_group) * (n_out / PF) + n / PF;
    u32 loads_left = qe - qb;
    u32 group_left = quads_per_group - qb % quads_per_group;
    u32 fresh = 0u;  // bit u: the quad in slot u starts a group (or the warp's range)
    auto issue = [&](u32 u, bool first) {
        if (loads_left != 0u) {
            --loads_left;
            if (group_left == 0u) {
                group_left = quads_per_group;
                sp += n_out;
                zp += n_out / PF;
                first = true;
            }
            --group_left;
            cp_async16(ring_w + u * slot_step, wp);
            wp += w_step;
            if (first) {
                cp_async8(ring_s + u * slot_step, sp);
                cp_async4(ring_s + u * slot_step + 8u, zp);
            }
            fresh = first ? (fresh | (1u << u)) : (fresh & ~(1u << u));
        }
        cp_async_commit();
    };
#pragma unroll
    for (u32 u = 0; u < D; ++u) issue(u, u == 0u);
    pdl_wait();

    // x rows 0..m-1 of the block's K slice, each 8 k as the pairs (k_i, k_{i+4}).
    {
        const u32 per_row = k_len / 8u;
        for (u32 i = tid; i < m * per_row; i += threads) {
            const u32 b = i / per_row, c = i % per_row;
            const U32x4 v = *reinterpret_cast<const U32x4*>(x + (u64)b * k_in + k_base + c * 8u);
            *reinterpret_cast<U32x4*>(xs + b * xstride + c * 8u) =
                U32x4{__byte_perm(v.x, v.z, 0x5410u), __byte_perm(v.x, v.z, 0x7632u), __byte_perm(v.y, v.w, 0x5410u),
                      __byte_perm(v.y, v.w, 0x7632u)};
        }
    }
    __syncthreads();
    u32 x_addr = (u32)__cvta_generic_to_shared(xs) + 2u * (min(gid, m - 1u) * xstride + (4u * qb + tig) * PF - k_base);

    // acc: this group's sums; tot: the scaled sums of the groups before. C fragment element
    // [t][e]: x row 2*tig + (e & 1), column 4*gid + 2*t + (e >> 1). FOLD: ax[e & 1] sums x.
    float acc[2][4], tot[2][4], ax[4];
    float sf[4] = {0.0f, 0.0f, 0.0f, 0.0f}, zf[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // the group's s, bias + z
    u32 cb[4] = {0u, 0u, 0u, 0u};  // !FOLD: -(bias + z) as a half pair per column
#pragma unroll
    for (u32 t = 0; t < 2; ++t)
#pragma unroll
        for (u32 e = 0; e < 4; ++e) acc[t][e] = tot[t][e] = 0.0f;
#pragma unroll
    for (u32 e = 0; e < 4; ++e) ax[e] = 0.0f;
    const u32 bias2 = (KIND == 1u ? 0x43004300u : 0x64006400u) | (group_len >> 31);
    const u32 one2 = (KIND == 1u ? 0x3f803f80u : 0x3c003c00u) | (group_len >> 31);
    const float bias = KIND == 1u ? 128.0f : 1024.0f;

    // The finished group into the totals (harmless before the first: everything is zero).
    auto flush = [&]() {
#pragma unroll
        for (u32 t = 0; t < 2; ++t)
#pragma unroll
            for (u32 e = 0; e < 4; ++e) {
                const u32 c = 2u * t + (e >> 1);
                const float v = FOLD ? fmaf(-zf[c], ax[e & 1u], acc[t][e]) : acc[t][e];
                tot[t][e] = fmaf(sf[c], v, tot[t][e]);
                acc[t][e] = 0.0f;
            }
        if constexpr (FOLD) {
#pragma unroll
            for (u32 e = 0; e < 4; ++e) ax[e] = 0.0f;
        }
    };

    auto consume = [&](u32 u) {
        cp_async_wait<D - 1u>();
        const U32x4 w = lds_v4(ring_w + u * slot_step);
        if (fresh & (1u << u)) {
            flush();
            const U32x4 sz = lds_v4(ring_s + u * slot_step);  // 4 scales, then the zero word
            sf[0] = half_to_f32((u16)(sz.x & 0xffffu), KIND);
            sf[1] = half_to_f32((u16)(sz.x >> 16), KIND);
            sf[2] = half_to_f32((u16)(sz.y & 0xffffu), KIND);
            sf[3] = half_to_f32((u16)(sz.y >> 16), KIND);
            const u32 z4 = sz.z >> zshift;  // the lane's 4 stored zeros (z - 1)
            if constexpr (FOLD) {
#pragma unroll
                for (u32 c = 0; c < 4; ++c) zf[c] = bias + (float)(((z4 >> (4u * c)) & 15u) + 1u);
            } else {
                // -(bias + z): the bit pattern of -bias plus z (as gemv_group_consts).
                const u32 neg_bias = KIND == 1u ? 0xC301C301u : 0xE401E401u;
                const u32 z2 = __byte_perm(z4, 0u, 0x1010u);
#pragma unroll
                for (u32 c = 0; c < 4; ++c) cb[c] = ((z2 >> (4u * c)) & 0x000f000fu) + neg_bias;
            }
        }
        // h[c][i]: column c, the half pair (k_i, k_{i+4}) of the lane's packed row.
        u32 h[4][4];
        const u32 words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (u32 c = 0; c < 4; ++c)
#pragma unroll
            for (u32 i = 0; i < 4; ++i) {
                const u32 t = ((words[c] >> (4u * i)) & 0x000f000fu) | bias2;
                h[c][i] = FOLD ? t : hfma2<KIND>(t, one2, cb[c]);
            }
        issue(u, false);  // the slot is free once its words are in registers (used above)
        const U32x4 xv = lds_v4(x_addr);
        x_addr += 2u * KQ;
        const u32 xr[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
        for (u32 s = 0; s < 2; ++s) {
#pragma unroll
            for (u32 t = 0; t < 2; ++t)
                mma_16816<KIND>(acc[t], h[2 * t][2 * s], h[2 * t + 1][2 * s], h[2 * t][2 * s + 1],
                                h[2 * t + 1][2 * s + 1], xr[2 * s], xr[2 * s + 1]);
            if constexpr (FOLD) mma_16816<KIND>(ax, one2, one2, one2, one2, xr[2 * s], xr[2 * s + 1]);
        }
    };

    u32 q0 = qb;
    for (; q0 + D <= qe; q0 += D) {
#pragma unroll
        for (u32 u = 0; u < D; ++u) consume(u);
    }
#pragma unroll
    for (u32 u = 0; u < D; ++u)
        if (q0 + u < qe) consume(u);
    flush();
    cp_async_wait<0>();
    __syncthreads();  // every ring slot and xs are done: the rings take the per-warp sums

#pragma unroll
    for (u32 t = 0; t < 2; ++t)
#pragma unroll
        for (u32 e = 0; e < 4; ++e)
            red[(kw * 8u + 2u * tig + (e & 1u)) * GS_COLS + tile * GV_COLS + 4u * gid + 2u * t + (e >> 1)] = tot[t][e];
    __syncthreads();
    const u32 nb0 = blockIdx.x * GS_COLS;
    gemv_store_sums<8>(red, n_kw, GS_COLS, m, nb0, min(GS_COLS, n_out - nb0), n_out, out, part, counters, &is_last,
                       tid, threads);
}

#define GEMV_ASYNC_KERNEL(KIND, D, FOLD, NAME)                                                            \
    extern "C" __global__ void __launch_bounds__(256) gptq_gemv_async_w4_m8_d##D##NAME(                   \
        const u16* x, const int* qweight, const int* qzeros, const u16* scales, float* out, float* part,  \
        u32* counters, u32 m, u32 n_out, u32 k_in, u32 group_len, u32 quads_per_split) {                  \
        gptq_gemv_async<KIND, D, FOLD>(x, qweight, qzeros, scales, out, part, counters, m, n_out, k_in,   \
                                       group_len, quads_per_split);                                       \
    }
#define GEMV_ASYNC_DEPTH(D)                       \
    GEMV_ASYNC_KERNEL(0, D, false, _f16)          \
    GEMV_ASYNC_KERNEL(1, D, false, _bf16)         \
    GEMV_ASYNC_KERNEL(0, D, true, _fold_f16)      \
    GEMV_ASYNC_KERNEL(1, D, true, _fold_bf16)
// Measured slower than the streaming kernel on the H200 (docs/cuda.md, "Asynchronous
// variant"), so only in the experiments module.
#ifdef GPTQ_EXPERIMENTS
GEMV_ASYNC_DEPTH(4)
GEMV_ASYNC_DEPTH(8)
GEMV_ASYNC_DEPTH(16)
#endif

// ------------------------------------------------------------------------------------------
// Decode through the bulk copy engine (`gptq_gemv_bulk_w<B>_m8_s<S>_*`, an experiment, sm_90
// and later: in the `gptq_experiments` module only). The streaming kernel's loads-only twin
// reads a 7B layer at ~2 TB/s (docs/cuda.md): its register ring keeps too few bytes in flight.
// Here the weights travel by `cp.async.bulk` (the Hopper bulk copy engine, no registers, one
// instruction per 512-byte row piece) into a ring of S stages in shared memory per K warp
// group, each stage C = 4 quads: 4 x 4 packed rows x the block's 128 columns (8 KiB) plus the
// scale and zero rows of every quad that starts a group (or the warp group's range). One
// producer warp (its lane 0) issues the copies; a stage's `full` mbarrier counts its bytes
// (expect_tx / complete_tx), its `empty` mbarrier the consumer warps done with it.
// The consumers are the streaming kernel's warps (4 across 128 columns x KW along K, the same
// K ranges, quads in the same order, the same dequantization and mma, the same sums), so the
// output is bit-identical to `gptq_gemv_stream_*` at the same K split; only where the bytes
// wait differs. The producer starts copying before `pdl_wait` (the weights are constant).
// Block: 32 * (4 * KW + 1) threads, flat; shared memory: the barriers (256 B), KW * S stages,
// then the x slice (the per-warp sums reuse the stages).
#define GB_C 4u                                  // quads per stage
#define GB_ROW 512u                              // bytes of one packed row of 128 columns
#define GB_SLOT 384u                             // a quad's scale row (256 B) and zero row (<= 128 B)
#define GB_STAGE (GB_C * 4u * GB_ROW + GB_C * GB_SLOT)
#define GB_BARRIERS 256u

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    u32 done;
    do {
        asm volatile(
            "{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\tselp.u32 %0, 1, 0, p;\n\t}"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    } while (!done);
}
// `bytes` (a multiple of 16, both addresses 16-byte aligned) from global to shared memory,
// completing that many bytes of the transaction count of mbarrier `bar`.
__device__ __forceinline__ void bulk_to_shared(u32 dst, const void* src, u32 bytes, u32 bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}

template <u32 BITS, u32 KIND, u32 S, bool TILED>
__device__ __forceinline__ void gptq_gemv_bulk(const u16* __restrict__ x, const int* __restrict__ qweight,
                                               const int* __restrict__ qzeros, const u16* __restrict__ scales,
                                               float* __restrict__ out, float* __restrict__ part,
                                               u32* __restrict__ counters, u32 m, u32 n_out, u32 k_in,
                                               u32 group_len, u32 quads_per_split) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr u32 PF = 32u / BITS, KQ = 4u * PF, HP = PF / 2u;
    extern __shared__ __align__(128) unsigned char gb_smem[];
    __shared__ u32 is_last;
    const u32 tid = threadIdx.x, threads = blockDim.x, lane = tid & 31u, warp = tid >> 5;
    const u32 n_kw = (threads / 32u - 1u) / 4u, producer = 4u * n_kw;
    const u32 gid = lane >> 2, tig = lane & 3u;
    const u32 quads = k_in / KQ;
    const u32 q_lo = min(quads, blockIdx.y * quads_per_split);
    const u32 q_hi = min(quads, q_lo + quads_per_split);
    const u32 per_warp = (q_hi - q_lo + n_kw - 1u) / n_kw;
    const u32 nb0 = blockIdx.x * GS_COLS, cols = min(GS_COLS, n_out - nb0);
    const u32 tiles = cols / GV_COLS;  // active warps per K group (n_out is a multiple of 32)
    const u32 quads_per_group = group_len / KQ;
    const u32 k_base = q_lo * KQ, k_len = (q_hi - q_lo) * KQ;
    const u32 xstride = ((k_len + 63u) & ~63u) + KQ;
    const u32 smem0 = (u32)__cvta_generic_to_shared(gb_smem);
    const u32 stage0 = smem0 + GB_BARRIERS;
    u16* xs = reinterpret_cast<u16*>(gb_smem + GB_BARRIERS + n_kw * S * GB_STAGE);
    float* red = reinterpret_cast<float*>(gb_smem + GB_BARRIERS);  // [KW][8][GS_COLS], after the loop
    // Barriers: full[kw][s] at 8 * (kw * S + s), empty[kw][s] 128 bytes further.
    auto full_bar = [&](u32 kw, u32 st) { return smem0 + 8u * (kw * S + st); };
    auto empty_bar = [&](u32 kw, u32 st) { return smem0 + 128u + 8u * (kw * S + st); };
    auto range = [&](u32 kw, u32* qb, u32* qe) {
        *qb = min(q_hi, q_lo + kw * per_warp);
        *qe = min(q_hi, *qb + per_warp);
    };
    // A quad whose constants are new: the first of its warp group's range or of a group.
    auto fresh = [&](u32 q, u32 qb) { return q == qb || q % quads_per_group == 0u; };

    if (tid == 0u) {
        for (u32 i = 0; i < n_kw * S; ++i) {
            mbar_init(smem0 + 8u * i, 1u);
            mbar_init(smem0 + 128u + 8u * i, tiles);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();

    // Producer: stage t of warp group kw (quads qb + C t ...) into ring slot t % S.
    const u32 row_bytes = cols * 4u, s_bytes = cols * 2u, z_bytes = cols / PF * 4u;
    auto issue = [&](u32 kw, u32 t) {
        u32 qb, qe;
        range(kw, &qb, &qe);
        const u32 q0 = qb + t * GB_C, cnt = min(GB_C, qe - q0), st = t % S;
        const u32 dst = stage0 + (kw * S + st) * GB_STAGE, bar = full_bar(kw, st);
        u32 bytes = cnt * 4u * row_bytes;
        for (u32 i = 0; i < cnt; ++i)
            if (fresh(q0 + i, qb)) bytes += s_bytes + z_bytes;
        mbar_expect_tx(bar, bytes);
        if constexpr (TILED) {
            // The column tile's packed rows 4 q0 .. 4 (q0 + cnt) - 1 are one contiguous run.
            bulk_to_shared(dst, qweight + ((u64)blockIdx.x * (k_in / PF) + 4u * q0) * GS_COLS, cnt * 4u * GB_ROW,
                           bar);
        }
        for (u32 i = 0; i < cnt; ++i) {
            const u32 q = q0 + i;
            if constexpr (!TILED) {
                for (u32 r = 0; r < 4u; ++r)
                    bulk_to_shared(dst + (i * 4u + r) * GB_ROW, qweight + (u64)(4u * q + r) * n_out + nb0,
                                   row_bytes, bar);
            }
            if (fresh(q, qb)) {
                const u32 g = q / quads_per_group, slot = dst + GB_C * 4u * GB_ROW + i * GB_SLOT;
                bulk_to_shared(slot, scales + (u64)g * n_out + nb0, s_bytes, bar);
                bulk_to_shared(slot + 256u, qzeros + (u64)g * (n_out / PF) + nb0 / PF, z_bytes, bar);
            }
        }
    };
    auto stages_of = [&](u32 kw) {
        u32 qb, qe;
        range(kw, &qb, &qe);
        return (qe - qb + GB_C - 1u) / GB_C;
    };
    if (warp == producer && lane == 0u) {
        for (u32 t = 0; t < S; ++t)
            for (u32 kw = 0; kw < n_kw; ++kw)
                if (t < stages_of(kw)) issue(kw, t);
    }

    pdl_wait();  // x, part and counters belong to the kernels before (see common.cuh)
    stage_x_rows(x, xs, m, k_in, k_base, k_len, xstride, tid, threads);
    __syncthreads();

    float acc[2][4];
#pragma unroll
    for (u32 t = 0; t < 2; ++t)
#pragma unroll
        for (u32 e = 0; e < 4; ++e) acc[t][e] = 0.0f;
    const u32 tile = warp % 4u, kw = warp / 4u;
    if (warp == producer) {
        if (lane == 0u) {
            u32 most = 0;
            for (u32 k = 0; k < n_kw; ++k) most = max(most, stages_of(k));
            for (u32 t = S; t < most; ++t)
                for (u32 k = 0; k < n_kw; ++k)
                    if (t < stages_of(k)) {
                        mbar_wait(empty_bar(k, t % S), (t / S - 1u) & 1u);
                        issue(k, t);
                    }
        }
        __syncwarp();
    } else if (tile < tiles) {
        u32 qb, qe;
        range(kw, &qb, &qe);
        const u32 n = nb0 + tile * GV_COLS + 4u * gid;
        const u32 zshift = BITS == 4 ? (n % 8u) * 4u : 0u;
        const u32 bias2 = (KIND == 1u ? 0x43004300u : 0x64006400u) | (group_len >> 31);
        u32 x_addr = (u32)__cvta_generic_to_shared(xs) + 2u * (min(gid, m - 1u) * xstride + (4u * qb + tig) * PF - k_base);
        u32 ca[4], cb[4];
        const u32 lane_w = tig * GB_ROW + (tile * GV_COLS + 4u * gid) * 4u;
        const u32 lane_s = (tile * GV_COLS + 4u * gid) * 2u;
        const u32 lane_z = 256u + (tile * GV_COLS + 4u * gid) / PF * 4u;
        const u32 nst = stages_of(kw);
        for (u32 t = 0; t < nst; ++t) {
            const u32 st = t % S, base = stage0 + (kw * S + st) * GB_STAGE;
            mbar_wait(full_bar(kw, st), (t / S) & 1u);
            const u32 q0 = qb + t * GB_C, cnt = min(GB_C, qe - q0);
#pragma unroll
            for (u32 i = 0; i < GB_C; ++i) {
                if (i >= cnt) break;
                if (fresh(q0 + i, qb)) {
                    const u32 slot = base + GB_C * 4u * GB_ROW + i * GB_SLOT;
                    U32x2 sr;
                    u32 zr;
                    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(sr.x), "=r"(sr.y) : "r"(slot + lane_s));
                    asm volatile("ld.shared.u32 %0, [%1];" : "=r"(zr) : "r"(slot + lane_z));
                    gemv_group_consts<BITS, KIND>(sr, zr, zshift, ca, cb);
                }
                const U32x4 w = lds_v4(base + i * 4u * GB_ROW + lane_w);
                u32 h[4][HP];
                gemv_dequant_quad<BITS, KIND>(w, ca, cb, bias2, h);
                u32 xv[HP];
                lds_x<HP>(x_addr, xv);
                x_addr += 2u * 4u * PF;
                gemv_mma_quad<BITS, KIND>(h, xv, acc);
            }
            __syncwarp();
            if (lane == 0u) mbar_arrive(empty_bar(kw, st));
        }
    }
    __syncthreads();  // every stage consumed: the stages take the per-warp sums
    if (warp < producer) {
        // C fragment: acc[t][e] is x row 2*tig + (e & 1), column 4*gid + 2*t + (e >> 1).
#pragma unroll
        for (u32 t = 0; t < 2; ++t)
#pragma unroll
            for (u32 e = 0; e < 4; ++e)
                red[(kw * 8u + 2u * tig + (e & 1u)) * GS_COLS + tile * GV_COLS + 4u * gid + 2u * t + (e >> 1)] =
                    acc[t][e];
    }
    __syncthreads();
    gemv_store_sums<8>(red, n_kw, GS_COLS, m, nb0, cols, n_out, out, part, counters, &is_last, tid, threads);
#else
    __trap();  // the host launches it on sm_90 and later only
#endif
}

#define GEMV_BULK_KERNEL(BITS, KIND, S, TILED, NAME)                                                       \
    extern "C" __global__ void __launch_bounds__(288) gptq_gemv_bulk_w##BITS##_m8_s##S##_##NAME(           \
        const u16* x, const int* qweight, const int* qzeros, const u16* scales, float* out, float* part,   \
        u32* counters, u32 m, u32 n_out, u32 k_in, u32 group_len, u32 quads_per_split) {                   \
        gptq_gemv_bulk<BITS, KIND, S, TILED>(x, qweight, qzeros, scales, out, part, counters, m, n_out,    \
                                             k_in, group_len, quads_per_split);                            \
    }
// `_tiled`: reads the column-tiled copy of qweight (`gptq_tile_qweight`), one bulk copy of up
// to 8 KiB per stage instead of 16 of 512 bytes (the engine's cost per copy, not bytes, limits
// the untiled kernel: docs/cuda.md).
#define GEMV_BULK_STAGES(BITS, S)                       \
    GEMV_BULK_KERNEL(BITS, 0, S, false, f16)            \
    GEMV_BULK_KERNEL(BITS, 1, S, false, bf16)           \
    GEMV_BULK_KERNEL(BITS, 0, S, true, f16_tiled)       \
    GEMV_BULK_KERNEL(BITS, 1, S, true, bf16_tiled)
#ifdef GPTQ_EXPERIMENTS
GEMV_BULK_STAGES(4, 2)
GEMV_BULK_STAGES(4, 4)
GEMV_BULK_STAGES(4, 8)
GEMV_BULK_STAGES(8, 2)
GEMV_BULK_STAGES(8, 4)
GEMV_BULK_STAGES(8, 8)
#endif

#ifndef GPTQ_EXPERIMENTS
GEMV_STREAM_BITS(4)
GEMV_STREAM_BITS(8)
#else
// Decode experiments (docs/cuda.md, "Profiled"; picked by GemvKernel::Stream's `tiled` and
// `reg_cap`), only in the `gptq_experiments` module so the production one neither compiles
// nor carries them. The m = 8 tensor-core kernel, named as in production plus
// - `_cap<B>`: __launch_bounds__(256, B) caps the registers so that B blocks of 256 threads
//   fit per SM (80 registers for 3, 64 for 4; ptxas spills the rest): does occupancy hide the
//   load latency better than the spill costs?
// - `_tiled`: reads the column-tiled copy of qweight: does one contiguous stream per block
//   (DRAM page locality) beat 512-byte pieces of rows 4N bytes apart?
// - `_pf<D>` (ring 4, D = 8, 16, 32): L2 prefetch D quads ahead (`gptq_gemv_stream`'s PFD):
//   do more bytes in flight between DRAM and L2, at no register cost, speed the stream up?
// - `_readonly` (ring 4): the loads without the math (READONLY; its output is meaningless),
//   the ceiling of this grid and lane layout. Reached only through `gemm_gptq_read_only`.
// - `_fold`: see FOLD at `gptq_gemv_stream`.
// For ring 4 every combination of the first two, for ring 8 the tiled one only.
#define GEMV_STREAM_EXPERIMENT_X(BITS, KIND, U, TILED, PFD, RO, FOLD, BOUNDS, NAME)                      \
    extern "C" __global__ void BOUNDS gptq_gemv_stream_w##BITS##_m8_u##U##_##NAME(                      \
        const u16* x, const int* qweight, const int* qzeros, const u16* scales, float* out,             \
        float* part, u32* counters, u32 m, u32 n_out, u32 k_in, u32 group_len, u32 quads_per_split) {    \
        gptq_gemv_stream<BITS, 8, KIND, U, false, TILED, PFD, RO, FOLD>(x, qweight, qzeros, scales, out,  \
                                                                        part, counters, m, n_out, k_in,   \
                                                                        group_len, quads_per_split);      \
    }
#define GEMV_STREAM_EXPERIMENT(BITS, KIND, U, TILED, BOUNDS, NAME) \
    GEMV_STREAM_EXPERIMENT_X(BITS, KIND, U, TILED, 0u, false, false, BOUNDS, NAME)
#define GEMV_STREAM_EXPERIMENTS(BITS, KIND, NAME)                                         \
    GEMV_STREAM_EXPERIMENT(BITS, KIND, 4, false, __launch_bounds__(256, 3), NAME##_cap3)   \
    GEMV_STREAM_EXPERIMENT(BITS, KIND, 4, false, __launch_bounds__(256, 4), NAME##_cap4)   \
    GEMV_STREAM_EXPERIMENT(BITS, KIND, 4, true, __launch_bounds__(256), NAME##_tiled)      \
    GEMV_STREAM_EXPERIMENT(BITS, KIND, 4, true, __launch_bounds__(256, 3), NAME##_tiled_cap3) \
    GEMV_STREAM_EXPERIMENT(BITS, KIND, 4, true, __launch_bounds__(256, 4), NAME##_tiled_cap4) \
    GEMV_STREAM_EXPERIMENT(BITS, KIND, 8, true, __launch_bounds__(256), NAME##_tiled)      \
    GEMV_STREAM_EXPERIMENT_X(BITS, KIND, 4, false, 8u, false, false, __launch_bounds__(256), NAME##_pf8)   \
    GEMV_STREAM_EXPERIMENT_X(BITS, KIND, 4, false, 16u, false, false, __launch_bounds__(256), NAME##_pf16) \
    GEMV_STREAM_EXPERIMENT_X(BITS, KIND, 4, false, 32u, false, false, __launch_bounds__(256), NAME##_pf32) \
    GEMV_STREAM_EXPERIMENT_X(BITS, KIND, 4, false, 0u, true, false, __launch_bounds__(256), NAME##_readonly)
GEMV_STREAM_EXPERIMENTS(4, 0, f16)
GEMV_STREAM_EXPERIMENTS(4, 1, bf16)
// `_fold` (int4, ring 4 and 8): the folded math (FOLD), where `fold_fits`.
GEMV_STREAM_EXPERIMENT_X(4, 0, 4, false, 0u, false, true, __launch_bounds__(256), f16_fold)
GEMV_STREAM_EXPERIMENT_X(4, 1, 4, false, 0u, false, true, __launch_bounds__(256), bf16_fold)
GEMV_STREAM_EXPERIMENT_X(4, 0, 8, false, 0u, false, true, __launch_bounds__(256), f16_fold)
GEMV_STREAM_EXPERIMENT_X(4, 1, 8, false, 0u, false, true, __launch_bounds__(256), bf16_fold)
GEMV_STREAM_EXPERIMENTS(8, 0, f16)
GEMV_STREAM_EXPERIMENTS(8, 1, bf16)

// The column-tiled copy of qweight ([K/PF, N] int32, N a multiple of 128) the `_tiled` kernels
// read: tiled[(t * rows + r) * 128 + c] = qweight[r * N + t * 128 + c] for column tile t, packed
// row r (rows = K/PF), column c of the tile. One thread per 16 bytes of the copy: a warp
// writes 512 contiguous bytes and reads one 512-byte piece of a source row.
extern "C" __global__ void gptq_tile_qweight(const int* __restrict__ qweight, int* __restrict__ tiled, u32 rows,
                                             u32 n_out) {
    const u64 i = ((u64)blockIdx.x * blockDim.x + threadIdx.x) * 4u;  // first int of the copy
    const u64 per_tile = (u64)rows * GS_COLS;
    if (i >= per_tile * (n_out / GS_COLS)) return;
    const u64 t = i / per_tile, r = i % per_tile / GS_COLS, c = i % GS_COLS;
    *reinterpret_cast<U32x4*>(tiled + i) = *reinterpret_cast<const U32x4*>(qweight + r * n_out + t * GS_COLS + c);
}
#endif

// ------------------------------------------------------------------------------------------
// The weight a GPTQ loader reconstructs, W[n][k] = half(scale * (q - zero)), for the columns
// n0 <= n < n0 + n_cols (written as rows n - n0 of `out`, [n_cols, K]). The `dequantize_gptq`
// op, and the prefill / act-order path (column chunks, then cuBLAS).
// One thread per (column, 32 consecutive k): consecutive threads take consecutive columns, so
// each qweight row is read coalesced, and every thread writes 64 contiguous bytes of its
// output row (whole 32-byte sectors).
template <u32 BITS>
__device__ __forceinline__ void gptq_dequantize_cols(const int* __restrict__ qweight, const int* __restrict__ qzeros,
                                                     const u16* __restrict__ scales, const int* __restrict__ g_idx,
                                                     u16* __restrict__ out, u32 n_out, u32 k_in, u32 group_len,
                                                     u32 kind, u32 n0, u32 n_cols) {
    constexpr u32 PF = 32u / BITS, WORDS = 32u / PF, MASK = (1u << BITS) - 1u;
    const u32 chunks = (k_in + 31u) / 32u;
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)n_cols * chunks) return;
    const u32 nl = (u32)(idx % n_cols), chunk = (u32)(idx / n_cols), n = n0 + nl;
    const u32 rows = k_in / PF;
    u32 h[16];
#pragma unroll
    for (u32 i = 0; i < WORDS; ++i) {
        const u32 r = chunk * WORDS + i;
        const bool ok = r < rows;
        const u32 word = ok ? (u32)qweight[(u64)r * n_out + n] : 0u;
        float s = 0.0f, z = 0.0f;
        if (ok && !g_idx) {
            // Sequential groups: group_len % PF == 0 (GptqWeight::upload), one group per word.
            const u32 g = r * PF / group_len;
            s = half_to_f32(scales[(u64)g * n_out + n], kind);
            z = gptq_zero(qzeros, g, n, n_out, BITS);
        }
#pragma unroll
        for (u32 j = 0; j < PF; ++j) {
            if (ok && g_idx) {
                const u32 g = (u32)g_idx[r * PF + j];
                s = half_to_f32(scales[(u64)g * n_out + n], kind);
                z = gptq_zero(qzeros, g, n, n_out, BITS);
            }
            const u32 v = f32_to_half(s * ((float)((word >> (BITS * j)) & MASK) - z), kind);
            const u32 e = i * PF + j;
            h[e / 2u] = (e & 1u) ? (h[e / 2u] | (v << 16)) : v;
        }
    }
    u16* dst = out + (u64)nl * k_in + (u64)chunk * 32u;
    if (chunk * 32u + 32u <= k_in && k_in % 8u == 0u) {
#pragma unroll
        for (u32 v = 0; v < 4; ++v)
            reinterpret_cast<U32x4*>(dst)[v] = U32x4{h[4 * v], h[4 * v + 1], h[4 * v + 2], h[4 * v + 3]};
    } else {
        const u32 valid = k_in - chunk * 32u;
#pragma unroll
        for (u32 e = 0; e < 32; ++e)
            if (e < valid) dst[e] = (u16)(h[e / 2u] >> (16u * (e & 1u)));
    }
}

#define DEQUANT_KERNEL(BITS)                                                                         \
    extern "C" __global__ void gptq_dequantize_w##BITS(const int* qweight, const int* qzeros,           \
                                                        const u16* scales, const int* g_idx, u16* out,  \
                                                        u32 n_out, u32 k_in, u32 group_len, u32 kind,   \
                                                        u32 n0, u32 n_cols) {                           \
        gptq_dequantize_cols<BITS>(qweight, qzeros, scales, g_idx, out, n_out, k_in, group_len, kind, n0, \
                                   n_cols);                                                              \
    }
#ifndef GPTQ_EXPERIMENTS
DEQUANT_KERNEL(4)
DEQUANT_KERNEL(8)
#endif
