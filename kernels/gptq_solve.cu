// GPTQ solver kernels (src/backend/cuda/gptq_solve.rs drives them; src/quant/gptq.rs is the
// CPU reference). The algorithm is the paper's (Frantar et al. 2022, Algorithm 1; the blocked
// lazy-update structure of IST-DASLab/gptq gptq.py `fasterquant`, no code taken) as the CPU
// solver implements it; cuBLAS does X^T X and the lazy trailing update, cuSOLVER the
// Cholesky and the triangular inverse; these kernels do the rest.
//
// Arithmetic that decides integer levels is written with explicit round-to-nearest
// intrinsics (__fadd_rn, __fmul_rn, ...) so that NVCC/NVRTC cannot contract it into FMAs:
// given the same inputs, the sweep makes exactly the CPU's f32 operations in the CPU's order.

// out[i] = h[i * n + i].
extern "C" __global__ void gq_diag_f32(const float* __restrict__ h, float* __restrict__ out,
                                       u32 n) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = h[(u64)i * n + i];
}

// h[i][j] = h[j][i] for i > j (row-major): the Hessian products filled the row-major upper
// triangle. 32x32 tiles through shared memory so reads and writes are both coalesced; a
// (32, 8) thread block per tile, grid (ceil(n/32), ceil(n/32)), tiles above the diagonal
// return at once.
extern "C" __global__ void gq_mirror_upper_to_lower(float* __restrict__ h, u32 n) {
    __shared__ float tile[32][33];
    const u32 bi = blockIdx.y, bj = blockIdx.x;  // destination tile (rows bi, cols bj)
    if (bj > bi) return;
    // Load the source tile: rows bj*32.., cols bi*32.. (row-major upper side).
    for (u32 r = threadIdx.y; r < 32u; r += 8u) {
        const u32 i = bj * 32u + r, j = bi * 32u + threadIdx.x;
        if (i < n && j < n) tile[r][threadIdx.x] = h[(u64)i * n + j];
    }
    __syncthreads();
    for (u32 r = threadIdx.y; r < 32u; r += 8u) {
        const u32 i = bi * 32u + r, j = bj * 32u + threadIdx.x;
        if (i < n && j < n && i > j) h[(u64)i * n + j] = tile[threadIdx.x][r];
    }
}

// *first = smallest index of a non-finite value (*first starts at 0xffffffff).
extern "C" __global__ void gq_first_nonfinite_f32(const float* __restrict__ x, u64 len,
                                                  u32* __restrict__ first) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len && !isfinite(x[i])) atomicMin(first, i < 0xfffffffeull ? (u32)i : 0xfffffffeu);
}

// J (P H P^T + lambda I) J in f64 with dead diagonals set to 1 first (gptq.rs
// damped_flipped_hessian): a[i][j] = h[perm[n-1-i]][perm[n-1-j]]. Symmetric, so its row-major
// and column-major layouts are the same buffer.
extern "C" __global__ void gq_damped_flipped(const float* __restrict__ h,
                                             const u32* __restrict__ perm,
                                             const unsigned char* __restrict__ dead,
                                             double* __restrict__ a, u32 n, double lambda) {
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)n * n) return;
    const u32 i = (u32)(idx / n), j = (u32)(idx % n);
    const u32 pi = perm[n - 1u - i], pj = perm[n - 1u - j];
    double v = (double)h[(u64)pi * n + pj];
    if (i == j) {
        if (dead[pi]) v = 1.0;
        v = __dadd_rn(v, lambda);
    }
    a[idx] = v;
}

// U (row-major, upper, f32) from L^-1 of the flipped matrix, which cuSOLVER left in the lower
// triangle of the column-major `linv`: U[i][j] = Linv[n-1-i][n-1-j] for j >= i, else 0
// (gptq.rs inverse_cholesky_upper).
extern "C" __global__ void gq_upper_from_flipped_inverse(const double* __restrict__ linv,
                                                         float* __restrict__ u, u32 n) {
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)n * n) return;
    const u32 i = (u32)(idx / n), j = (u32)(idx % n);
    float v = 0.0f;
    if (j >= i) {
        const u32 r = n - 1u - i, c = n - 1u - j;  // r >= c: lower triangle
        v = (float)linv[(u64)c * n + r];
    }
    u[idx] = v;
}

// grid.rs fit_range: the range includes 0, is symmetric for symmetric grids, [-1, 1] when
// all zero.
__device__ __forceinline__ void gq_fit_range(float* lo, float* hi, u32 sym) {
    if (sym) {
        *hi = fmaxf(*hi, -*lo);
        if (*lo < 0.0f) *lo = -*hi;
    }
    if (*lo == 0.0f && *hi == 0.0f) {
        *lo = -1.0f;
        *hi = 1.0f;
    }
}

// grid.rs GroupParams::from_range, with the same f32 operations. Returns false when the
// stored scale is not finite (the host reports the CPU's error).
__device__ __forceinline__ bool gq_from_range(float lo, float hi, u32 bits, u32 sym, u32 store,
                                              float* scale_out, u32* zero_out) {
    const float maxq = (float)((1u << bits) - 1u);
    float scale = __fdiv_rn(__fsub_rn(hi, lo), maxq);
    u32 zero = sym ? (1u << (bits - 1u)) : grid_f32_as_u32(grid_round_half_even(__fdiv_rn(-lo, scale)));
    if (!sym && zero == 0u) {
        zero = 1u;
        scale = __fdiv_rn(hi, __fsub_rn(maxq, 1.0f));
    }
    const float stored = grid_store_round(scale, store);
    if (!isfinite(stored)) return false;
    *scale_out = stored > 0.0f ? stored : grid_store_min_positive(store);
    *zero_out = zero;
    return true;
}

// GroupParams::quantize then dequantize: the level of x and its value on the grid.
__device__ __forceinline__ u32 gq_level(float x, float scale, float zf, float maxq) {
    const float qv = __fadd_rn(grid_round_half_even(__fdiv_rn(x, scale)), zf);
    return grid_f32_as_u32(fminf(fmaxf(qv, 0.0f), maxq));
}
__device__ __forceinline__ float gq_dequant(u32 level, float scale, float zf) {
    return __fmul_rn(scale, __fsub_rn((float)level, zf));
}

// grid.rs clip_error of row values [j, end) on one warp: lane l sums |x - dq(x)|^2.5 of the
// values j + l, j + l + 32, ..., then the xor butterfly (warp_order_sum); every lane returns
// the total.
__device__ __forceinline__ float gq_clip_error(const float* wrow, u32 j, u32 end, float scale, u32 zero,
                                               float maxq, u32 lane) {
    const float zf = (float)zero;
    float acc = 0.0f;
    for (u32 c = j + lane; c < end; c += 32u) {
        const float x = wrow[c];
        const float d = fabsf(__fsub_rn(x, gq_dequant(gq_level(x, scale, zf, maxq), scale, zf)));
        acc = __fadd_rn(acc, __fmul_rn(__fmul_rn(d, d), __fsqrt_rn(d)));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc = __fadd_rn(acc, __shfl_xor_sync(0xffffffffu, acc, o));
    return acc;
}

// grid.rs GroupParams::fit (clip = 0) or fit_clipped (clip = 1) of row values [j, end), on
// one warp; lo/hi are the values' min and max folded with 0. Every lane returns the same grid.
#define GQ_CLIP_GRID 100u
#define GQ_CLIP_STEPS 80u
__device__ __forceinline__ bool gq_fit_group(const float* wrow, u32 j, u32 end, float lo, float hi, u32 bits,
                                             u32 sym, u32 store, u32 clip, u32 lane, float* scale_out,
                                             u32* zero_out) {
    gq_fit_range(&lo, &hi, sym);
    if (!gq_from_range(lo, hi, bits, sym, store, scale_out, zero_out)) return false;
    if (!clip) return true;
    const float maxq = (float)((1u << bits) - 1u);
    float best = gq_clip_error(wrow, j, end, *scale_out, *zero_out, maxq, lane);
    for (u32 i = 1; i < GQ_CLIP_STEPS; ++i) {
        const float p = __fsub_rn(1.0f, __fdiv_rn((float)i, (float)GQ_CLIP_GRID));
        float s;
        u32 z;
        if (!gq_from_range(__fmul_rn(p, lo), __fmul_rn(p, hi), bits, sym, store, &s, &z)) return false;
        const float err = gq_clip_error(wrow, j, end, s, z, maxq, lane);
        if (err < best) {
            best = err;
            *scale_out = s;
            *zero_out = z;
        }
    }
    return true;
}

// One warp fits row `row`'s group g, values [j, end) of wrow (min/max folded with 0, then
// gq_fit_group), and lane 0 stores the grid in scales/zeros [groups, n_out]; a grid that cannot
// be stored sets *overflow and yields scale 1, zero 0. Min/max are exact in any order.
__device__ __forceinline__ void gq_fit_store_group(const float* wrow, u32 j, u32 end, u32 g, u32 row, u32 n_out,
                                                   u32 bits, u32 sym, u32 store, u32 clip, u32 lane,
                                                   float* __restrict__ scales, u32* __restrict__ zeros,
                                                   u32* __restrict__ overflow, float* scale_out, u32* zero_out) {
    float lo = 0.0f, hi = 0.0f;
    for (u32 c = j + lane; c < end; c += 32u) {
        const float v = wrow[c];
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
        hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
    }
    if (!gq_fit_group(wrow, j, end, lo, hi, bits, sym, store, clip, lane, scale_out, zero_out)) {
        if (lane == 0) *overflow = 1u;
        *scale_out = 1.0f;
        *zero_out = 0u;
    }
    if (lane == 0) {
        scales[(u64)g * n_out + row] = *scale_out;
        zeros[(u64)g * n_out + row] = *zero_out;
    }
}

#define GQ_MAX_BLOCK 128
#define GQ_SLOTS (GQ_MAX_BLOCK / 32)

// One lazy-update block of the GPTQ sweep, columns i1 .. i1+cnt (cnt <= 128) in sweep order.
// One warp per output row (row-parallel: rows never interact inside a block); lane l holds
// the block's columns l, l+32, l+64, l+96 in registers.
//
// w        [n_out, k] f32, sweep order: the weight as it stands at the block start (the
//          trailing GEMM of earlier blocks applied). Not written: dynamic groups are fitted
//          on these block-start values, as in the reference.
// u        [k, k] f32 upper factor of the damped inverse Hessian.
// q        [n_out, k] levels (sweep order), written for the block's columns.
// err      [n_out, GQ_MAX_BLOCK] f32: (w - dq) / U[j][j] of each column, for the trailing GEMM.
// clip     1: dynamic groups are fitted with the clip search (grid.rs fit_clipped).
// scales/zeros [groups, n_out]: written here for dynamic groups when their first column is
//          reached, read for up-front groups and for groups begun in an earlier block.
// col_group [k] group of each sweep position.
// row_loss [n_out] f64, accumulates ((w - dq) / U[j][j])^2 in sweep order.
extern "C" __global__ void gq_sweep_block(const float* __restrict__ w, const float* __restrict__ u,
                                          unsigned char* __restrict__ q, float* __restrict__ err,
                                          float* __restrict__ scales, u32* __restrict__ zeros,
                                          const u32* __restrict__ col_group,
                                          double* __restrict__ row_loss, u32* __restrict__ overflow,
                                          u32 n_out, u32 k, u32 i1, u32 cnt, u32 glen, u32 bits,
                                          u32 sym, u32 store, u32 dynamic, u32 clip) {
    const u32 row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const u32 lane = threadIdx.x & 31u;
    if (row >= n_out) return;  // whole warps leave together
    const float* wrow = w + (u64)row * k;
    const float maxq = (float)((1u << bits) - 1u);

    float w1[GQ_SLOTS];
    float e_keep[GQ_SLOTS];
    unsigned char q_keep[GQ_SLOTS];
#pragma unroll
    for (u32 t = 0; t < GQ_SLOTS; ++t) {
        const u32 c = t * 32u + lane;
        w1[t] = c < cnt ? wrow[i1 + c] : 0.0f;
        e_keep[t] = 0.0f;
        q_keep[t] = 0;
    }

    u32 cur_g = 0xffffffffu;
    float scale = 1.0f, zf = 0.0f;
    // Lane 0 continues the row's running sum, so the additions are the CPU's, in its order.
    double loss = lane == 0 ? row_loss[row] : 0.0;
#pragma unroll
    for (u32 t = 0; t < GQ_SLOTS; ++t) {
        for (u32 l = 0; l < 32u; ++l) {
            const u32 i = t * 32u + l;
            if (i >= cnt) break;  // uniform across the warp
            const u32 j = i1 + i;
            const u32 g = col_group[j];
            if (dynamic && j % glen == 0u) {
                // Fit the group on the block-start weights (the clip search sums in grid.rs
                // warp_order_sum order).
                float s;
                u32 z;
                gq_fit_store_group(wrow, j, min(j + glen, k), g, row, n_out, bits, sym, store, clip, lane, scales,
                                   zeros, overflow, &s, &z);
                scale = s;
                zf = (float)z;
                cur_g = g;
            } else if (g != cur_g) {
                scale = scales[(u64)g * n_out + row];
                zf = (float)zeros[(u64)g * n_out + row];
                cur_g = g;
            }
            const float x = __shfl_sync(0xffffffffu, w1[t], l);
            const u32 level = gq_level(x, scale, zf, maxq);
            const float dq = gq_dequant(level, scale, zf);
            const float* urow = u + (u64)j * k + i1;
            const float d = urow[i];
            const float diff = __fsub_rn(x, dq);
            const float e = __fdiv_rn(diff, d);
            if (lane == 0) {
                const double r = (double)diff / (double)d;
                loss += r * r;
            }
            if (lane == l) {
                e_keep[t] = e;
                q_keep[t] = (unsigned char)level;
            }
            // Spread the error over the rest of the block: w1[c] -= e * U[j][i1 + c], c > i.
#pragma unroll
            for (u32 tt = t; tt < GQ_SLOTS; ++tt) {
                const u32 c = tt * 32u + lane;
                if (c > i && c < cnt) w1[tt] = __fsub_rn(w1[tt], __fmul_rn(e, urow[c]));
            }
        }
    }
#pragma unroll
    for (u32 t = 0; t < GQ_SLOTS; ++t) {
        const u32 c = t * 32u + lane;
        if (c < cnt) {
            q[(u64)row * k + i1 + c] = q_keep[t];
            err[(u64)row * GQ_MAX_BLOCK + c] = e_keep[t];
        }
    }
    if (lane == 0) row_loss[row] = loss;
}

// out[r] = sum_j a[r][j] * b[r][j] in f64, one warp per row (fixed order: deterministic).
extern "C" __global__ void gq_row_dots(const float* __restrict__ a, const float* __restrict__ b,
                                       double* __restrict__ out, u32 rows, u32 cols) {
    const u32 row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const u32 lane = threadIdx.x & 31u;
    if (row >= rows) return;
    const float* ar = a + (u64)row * cols;
    const float* br = b + (u64)row * cols;
    double s = 0.0;
    for (u32 j = lane; j < cols; j += 32u) s += (double)ar[j] * (double)br[j];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) out[row] = s;
}

// Causal softmax over scores [heads, seqlen, seqlen] (row i of head blockIdx.y is blockIdx.x):
// p[j] = exp(s[j] - max) / sum over j <= i, zero for j > i (calib_forward.rs
// causal_attention, whose scores already carry the 1/sqrt(head_dim) scale).
extern "C" __global__ void gq_causal_softmax(float* __restrict__ s, u32 seqlen) {
    const u32 i = blockIdx.x;
    float* row = s + ((u64)blockIdx.y * seqlen + i) * seqlen;
    __shared__ float red[32];
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const float neg_inf = __int_as_float(0xff800000);  // no CUDA headers, so no INFINITY
    float m = neg_inf;
    for (u32 j = threadIdx.x; j <= i; j += blockDim.x) m = fmaxf(m, row[j]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) red[warp] = m;
    __syncthreads();
    m = neg_inf;
    for (u32 w = 0; w < nwarps; ++w) m = fmaxf(m, red[w]);
    float sum = 0.0f;
    for (u32 j = threadIdx.x; j <= i; j += blockDim.x) {
        const float e = expf(row[j] - m);
        row[j] = e;
        sum += e;
    }
    sum = block_sum(sum);
    const float inv = 1.0f / sum;
    for (u32 j = threadIdx.x; j < seqlen; j += blockDim.x) row[j] = j <= i ? row[j] * inv : 0.0f;
}

// ---- Device-resident per-linear work (gptq_solve.rs `solve_linear`): the weight never makes
// a round trip through the host; only the packed result comes back.

// The sweep-order f32 weight from the 16-bit original (gptq.rs sweep_order_weight):
// out[n][i] = dead[perm[i]] ? 0 : w16[n][perm[i]].
extern "C" __global__ void gq_sweep_weight_from_half(const u16* __restrict__ w16, u32 kind,
                                                     const u32* __restrict__ perm,
                                                     const unsigned char* __restrict__ dead,
                                                     float* __restrict__ out, u32 n_out, u32 k) {
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)n_out * k) return;
    const u32 n = (u32)(idx / k), i = (u32)(idx % k);
    const u32 c = perm[i];
    out[idx] = dead[c] ? 0.0f : half_to_f32(w16[(u64)n * k + c], kind);
}

// out[n][perm[i]] = wp[n][i]: the sweep-order weight (dead columns zeroed) back in original
// column order, for the up-front group fit.
extern "C" __global__ void gq_unpermute_cols(const float* __restrict__ wp, const u32* __restrict__ perm,
                                             float* __restrict__ out, u32 n_out, u32 k) {
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)n_out * k) return;
    const u32 n = (u32)(idx / k), i = (u32)(idx % k);
    out[(u64)n * k + perm[i]] = wp[idx];
}

// gptq.rs up_front_params on the device: one warp per (row, group) of w ([n_out, k], original
// column order, dead columns zeroed), the group's columns g*glen .. min(k, (g+1)*glen), fitted
// with gq_fit_group (min/max, or the clip search when clip = 1: the same grids as the CPU's,
// bit for bit). scales/zeros [groups, n_out]; *overflow = 1 when a stored scale is not finite
// (the host then reports the CPU's error).
extern "C" __global__ void gq_fit_groups(const float* __restrict__ w, float* __restrict__ scales,
                                         u32* __restrict__ zeros, u32* __restrict__ overflow, u32 n_out,
                                         u32 k, u32 glen, u32 groups, u32 bits, u32 sym, u32 store,
                                         u32 clip) {
    const u64 wid = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const u32 lane = threadIdx.x & 31u;
    if (wid >= (u64)n_out * groups) return;  // whole warps leave together
    const u32 row = (u32)(wid / groups), g = (u32)(wid % groups);
    const float* wrow = w + (u64)row * k;
    const u32 j = g * glen;
    float s;
    u32 z;
    gq_fit_store_group(wrow, j, min(j + glen, k), g, row, n_out, bits, sym, store, clip, lane, scales, zeros,
                       overflow, &s, &z);
}

// Dequantized weight in original column order (QuantizedLinear::dequantize):
// out[n][c] = scale[g][n] * (q[n][src(c)] - zero[g][n]) with src(c) = col_src[c] (the sweep
// position of column c; identity when null) and g = g_of_col[c] (c / glen when null); the
// same two f32 operations as the host. out16 (optional) gets it rounded to `kind` (what the
// host uploads for the forward after `half.from_f32`).
extern "C" __global__ void gq_dequant_levels(const unsigned char* __restrict__ q,
                                             const u32* __restrict__ col_src,
                                             const float* __restrict__ scales,
                                             const u32* __restrict__ zeros,
                                             const u32* __restrict__ g_of_col, u32 glen,
                                             float* __restrict__ out, u16* __restrict__ out16,
                                             u32 kind, u32 n_out, u32 k) {
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)n_out * k) return;
    const u32 n = (u32)(idx / k), c = (u32)(idx % k);
    const u32 src = col_src ? col_src[c] : c;
    const u32 g = g_of_col ? g_of_col[c] : c / glen;
    const u64 p = (u64)g * n_out + n;
    const float v = __fmul_rn(scales[p], __fsub_rn((float)q[(u64)n * k + src], (float)zeros[p]));
    out[idx] = v;
    if (out16) out16[idx] = f32_to_half(v, kind);
}

// GPTQ v1 qweight ([k / pf, n_out] int32, gptq_v1.rs pack): word (r, n) holds the levels of
// columns r*pf .. r*pf+pf-1 of row n, column r*pf+j in bits [bits*j, bits*j+bits).
extern "C" __global__ void gq_pack_qweight(const unsigned char* __restrict__ q,
                                           const u32* __restrict__ col_src,
                                           int* __restrict__ qweight, u32 n_out, u32 k, u32 bits) {
    const u32 pf = 32u / bits, mask = (1u << bits) - 1u;
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)(k / pf) * n_out) return;
    const u32 r = (u32)(idx / n_out), n = (u32)(idx % n_out);
    const unsigned char* row = q + (u64)n * k;
    u32 word = 0u;
    for (u32 j = 0; j < pf; ++j) {
        const u32 c = r * pf + j;
        word |= ((u32)row[col_src ? col_src[c] : c] & mask) << (bits * j);
    }
    qweight[idx] = (int)word;
}

// a[i] = a[i] - b[i] when sub_from_b == 0, else a[i] = b[i] - a[i] (in place).
extern "C" __global__ void gq_sub_in_place(float* __restrict__ a, const float* __restrict__ b,
                                           u64 n, u32 sub_from_b) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] = sub_from_b ? __fsub_rn(b[i], a[i]) : __fsub_rn(a[i], b[i]);
}

// Weight-space error of d against w (stats.rs ErrorStats): per block, Σ(w-d)², Σw² in f64 and
// max|w-d|, over a fixed grid-stride partition; the host adds the blocks' partials in order,
// so the result does not depend on scheduling. blockDim.x must be 256.
extern "C" __global__ void __launch_bounds__(256) gq_error_partials(
    const float* __restrict__ w, const float* __restrict__ d, u64 n, double* __restrict__ err,
    double* __restrict__ norm, double* __restrict__ max_abs) {
    __shared__ double se[256], sn[256], sm[256];
    double e = 0.0, s = 0.0, m = 0.0;
    for (u64 i = (u64)blockIdx.x * 256u + threadIdx.x; i < n; i += (u64)gridDim.x * 256u) {
        const double x = (double)w[i], y = (double)d[i];
        const double diff = x - y;
        e += diff * diff;
        s += x * x;
        m = fmax(m, fabs(diff));
    }
    se[threadIdx.x] = e;
    sn[threadIdx.x] = s;
    sm[threadIdx.x] = m;
    __syncthreads();
    for (u32 o = 128; o > 0; o >>= 1) {
        if (threadIdx.x < o) {
            se[threadIdx.x] += se[threadIdx.x + o];
            sn[threadIdx.x] += sn[threadIdx.x + o];
            sm[threadIdx.x] = fmax(sm[threadIdx.x], sm[threadIdx.x + o]);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        err[blockIdx.x] = se[0];
        norm[blockIdx.x] = sn[0];
        max_abs[blockIdx.x] = sm[0];
    }
}
