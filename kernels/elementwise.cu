// Row-wise and elementwise ops of the decoder (see src/backend/mod.rs for their contracts and
// src/runner/forward.rs for the CPU numerics they mirror).

// One block per row.
// Row loops of the norms: thread t takes elements t, t + blockDim, ... of the row, in that
// order, as a plain strided loop would, but loads ROW_BATCH of them at once before using any.
// The one-at-a-time loop waited a full memory latency per element (a 4096-wide row took ~11 us
// on an H200, Nsight Compute, docs/cuda.md); the sums and values are bit-identical to it.
#define ROW_BATCH 8

// Sum of squares of the thread's elements of row xr (after xr += yr when ADD; the sum is over
// the new values).
template <bool ADD>
__device__ __forceinline__ float row_sum_squares(float* __restrict__ xr, const float* __restrict__ yr, u32 dim) {
    float ss = 0.0f;
    for (u32 i0 = threadIdx.x; i0 < dim; i0 += ROW_BATCH * blockDim.x) {
        float v[ROW_BATCH];
#pragma unroll
        for (u32 j = 0; j < ROW_BATCH; ++j) {
            const u32 i = i0 + j * blockDim.x;
            v[j] = i < dim ? xr[i] : 0.0f;
            if (ADD && i < dim) v[j] += yr[i];
        }
#pragma unroll
        for (u32 j = 0; j < ROW_BATCH; ++j) {
            const u32 i = i0 + j * blockDim.x;
            if (i < dim) {
                if (ADD) xr[i] = v[j];
                ss += v[j] * v[j];
            }
        }
    }
    return ss;
}

// out[i] = store((xr[i] * inv) * w[i]) for the thread's elements, ROW_BATCH loads at a time.
template <typename Store>
__device__ __forceinline__ void row_scale(const float* __restrict__ xr, const float* __restrict__ w, float inv,
                                          u32 dim, Store store) {
    for (u32 i0 = threadIdx.x; i0 < dim; i0 += ROW_BATCH * blockDim.x) {
        float a[ROW_BATCH], b[ROW_BATCH];
#pragma unroll
        for (u32 j = 0; j < ROW_BATCH; ++j) {
            const u32 i = i0 + j * blockDim.x;
            a[j] = i < dim ? xr[i] : 0.0f;
            b[j] = i < dim ? w[i] : 0.0f;
        }
#pragma unroll
        for (u32 j = 0; j < ROW_BATCH; ++j) {
            const u32 i = i0 + j * blockDim.x;
            if (i < dim) store(i, (a[j] * inv) * b[j]);
        }
    }
}

extern "C" __global__ void rms_norm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                        float* __restrict__ out, u32 rows, u32 dim, float eps) {
    const u32 row = blockIdx.x;
    if (row >= rows) return;
    // Not written (ADD = false): the cast only satisfies the shared helper's signature.
    float* xr = const_cast<float*>(x) + (u64)row * dim;
    float ss = row_sum_squares<false>(xr, nullptr, dim);
    ss = block_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    float* o = out + (u64)row * dim;
    row_scale(xr, w, inv, dim, [&](u32 i, float v) { o[i] = v; });
}

// NeoX rotate-half: dimension i pairs with i + head_dim/2. The angle is an f32 product
// (transformers computes inv_freq @ positions in f32); cos/sin in double, then rounded,
// as the CPU runner does.
extern "C" __global__ void rope_f32(float* __restrict__ x, const u32* __restrict__ pos,
                                    const float* __restrict__ inv_freq, u32 rows, u32 width,
                                    u32 head_dim) {
    const u32 half = head_dim / 2, heads = width / head_dim;
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    const u64 total = (u64)rows * heads * half;
    if (idx >= total) return;
    const u32 i = (u32)(idx % half);
    const u32 h = (u32)((idx / half) % heads);
    const u32 r = (u32)(idx / ((u64)half * heads));
    const float a = __fmul_rn((float)pos[r], inv_freq[i]);
    const float c = (float)cos((double)a), s = (float)sin((double)a);
    float* p = x + (u64)r * width + (u64)h * head_dim;
    const float x0 = p[i], x1 = p[i + half];
    p[i] = x0 * c - x1 * s;
    p[i + half] = x1 * c + x0 * s;
}

extern "C" __global__ void silu_mul_f32(const float* __restrict__ gate, const float* __restrict__ up,
                                        float* __restrict__ out, u64 n) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
}

// Element i of silu_mul over a fused gate|up output gu [rows, 2 * inter] (i < rows * inter).
__device__ __forceinline__ float silu_mul_fused_at(const float* __restrict__ gu, u64 i, u32 inter) {
    const u64 r = i / inter, j = i % inter;
    const float* row = gu + r * 2 * inter;
    const float g = row[j];
    return g / (1.0f + expf(-g)) * row[inter + j];
}

// silu_mul over a fused gate|up output: gu [rows, 2 * inter], out [rows, inter] (n = rows * inter).
extern "C" __global__ void silu_mul_fused_f32(const float* __restrict__ gu, float* __restrict__ out,
                                              u64 n, u32 inter) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = silu_mul_fused_at(gu, i, inter);
}

// dst[r, j] = src[r, col0 + j]: one column block of a fused linear's output (n = rows * dst_cols).
extern "C" __global__ void split_cols_f32(const float* __restrict__ src, float* __restrict__ dst,
                                          u64 n, u32 src_cols, u32 col0, u32 dst_cols) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const u64 r = i / dst_cols, j = i % dst_cols;
    dst[i] = src[r * src_cols + col0 + j];
}

// Out-of-range ids give NaN rows (the host cannot check ids that live on the device).
extern "C" __global__ void embedding_half(const u16* __restrict__ table, const u32* __restrict__ ids,
                                          float* __restrict__ out, u32 rows, u32 hidden, u32 vocab,
                                          u32 kind) {
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)rows * hidden) return;
    const u32 r = (u32)(idx / hidden), j = (u32)(idx % hidden);
    const u32 t = ids[r];
    out[idx] = t < vocab ? half_to_f32(table[(u64)t * hidden + j], kind) : __int_as_float(0x7fc00000);
}

// One block per row; ties go to the lowest index (torch.argmax), NaNs are never chosen; margin =
// the largest value minus the largest of the others (src/runner/generate.rs argmax_with_margin:
// the same index, and the same margin but for the sign of a zero one when the runners-up are
// +0 and -0: every step is a comparison, the one subtraction is the same). Each thread scans its
// strided elements as the sequential loop does; merging two (top, index, second): the larger top
// (the lower index on ties) wins and the loser's top joins the seconds.
// 1024 threads, each loading ROW_BATCH elements at a time (with 256 threads and one load at a
// time a 120k-entry vocabulary took 184 us on an H200, Nsight Compute, docs/cuda.md). The
// result does not depend on how the row is partitioned among threads.
#define ARGMAX_THREADS 1024
extern "C" __global__ void __launch_bounds__(ARGMAX_THREADS) argmax_f32(const float* __restrict__ x,
                                                                        u32* __restrict__ out,
                                                                        float* __restrict__ margin, u32 rows,
                                                                        u32 cols) {
    __shared__ float best_v[ARGMAX_THREADS];  // launched with exactly ARGMAX_THREADS threads
    __shared__ float second_v[ARGMAX_THREADS];
    __shared__ u32 best_i[ARGMAX_THREADS];
    const u32 row = blockIdx.x;
    if (row >= rows) return;
    const float* xr = x + (u64)row * cols;
    const float NEG_INF = -__int_as_float(0x7f800000);
    const u32 NONE = 0xffffffffu;  // no element above -inf yet
    float bv = NEG_INF, sv = NEG_INF;
    u32 bi = NONE;
    for (u32 i0 = threadIdx.x; i0 < cols; i0 += ROW_BATCH * blockDim.x) {
        float vs[ROW_BATCH];
#pragma unroll
        for (u32 j = 0; j < ROW_BATCH; ++j) {
            const u32 i = i0 + j * blockDim.x;
            vs[j] = i < cols ? xr[i] : NEG_INF;
        }
#pragma unroll
        for (u32 j = 0; j < ROW_BATCH; ++j) {
            const float v = vs[j];
            if (v > bv) {
                sv = bv;
                bv = v;
                bi = i0 + j * blockDim.x;
            } else if (v > sv) {
                sv = v;
            }
        }
    }
    best_v[threadIdx.x] = bv;
    second_v[threadIdx.x] = sv;
    best_i[threadIdx.x] = bi;
    __syncthreads();
    for (u32 s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            const float ov = best_v[threadIdx.x + s], os = second_v[threadIdx.x + s];
            const u32 oi = best_i[threadIdx.x + s];
            const float mv = best_v[threadIdx.x], ms = second_v[threadIdx.x];
            const u32 mi = best_i[threadIdx.x];
            const bool take = ov > mv || (ov == mv && oi < mi);
            float sec = os > ms ? os : ms;
            const float loser = take ? mv : ov;
            if (loser > sec) sec = loser;
            if (take) {
                best_v[threadIdx.x] = ov;
                best_i[threadIdx.x] = oi;
            }
            second_v[threadIdx.x] = sec;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        out[row] = best_i[0] == NONE ? 0u : best_i[0];
        margin[row] = best_v[0] - second_v[0];
    }
}

extern "C" __global__ void to_half_f32(const float* __restrict__ x, u16* __restrict__ out, u64 n, u32 kind) {
    pdl_start();
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f32_to_half(x[i], kind);
}

extern "C" __global__ void from_half_u16(const u16* __restrict__ x, float* __restrict__ out, u64 n, u32 kind) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = half_to_f32(x[i], kind);
}

// The cache holds the model's 16-bit type (kind as in f32_to_half): k/v are rounded to nearest
// even as they are stored, like to_half_f32. Rows whose slot or position is outside the cache
// are skipped (the host checks what it can).
extern "C" __global__ void kv_append_half(const float* __restrict__ k, const float* __restrict__ v,
                                          const u32* __restrict__ slots, const u32* __restrict__ pos,
                                          u16* __restrict__ kc, u16* __restrict__ vc, u32 rows,
                                          u32 kvd, u32 max_len, u32 n_slots, u32 kind) {
    pdl_start();
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)rows * kvd) return;
    const u32 r = (u32)(idx / kvd), j = (u32)(idx % kvd);
    const u32 s = slots[r], p = pos[r];
    if (s >= n_slots || p >= max_len) return;
    const u64 at = ((u64)s * max_len + p) * kvd + j;
    kc[at] = f32_to_half(k[idx], kind);
    vc[at] = f32_to_half(v[idx], kind);
}

// x[i] += y[i]
extern "C" __global__ void add_f32(float* __restrict__ x, const float* __restrict__ y, u64 n) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

// x[r, j] += bias[j]
extern "C" __global__ void add_bias_f32(float* __restrict__ x, const float* __restrict__ bias, u64 n, u32 cols) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += bias[i % cols];
}

// out[r] = x[idx[r]] (rows of `width`); rows outside x give NaN rows.
extern "C" __global__ void gather_rows_f32(const float* __restrict__ x, const u32* __restrict__ idx,
                                           float* __restrict__ out, u32 rows_out, u32 rows_in, u32 width) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)rows_out * width) return;
    const u32 r = (u32)(i / width), j = (u32)(i % width);
    const u32 src = idx[r];
    out[i] = src < rows_in ? x[(u64)src * width + j] : __int_as_float(0x7fc00000);
}

// --- Fused decoder ops (one launch where the runner used two to seven; see src/backend/mod.rs
// add_rms_norm_half, silu_mul_fused_half, qkv_rope_norm). Each repeats the arithmetic of the
// ops it replaces (rms_norm_f32, to_half_f32, silu_mul_fused_f32, split_cols_f32, rope_f32),
// with the same block size (256) and reduction (block_sum) for the sums.

// One block of 256 per row: x += y (ADD), then out = half(rms_norm(x)).
template <bool ADD>
__device__ __forceinline__ void add_rms_norm_half_row(float* __restrict__ x, const float* __restrict__ y,
                                                      const float* __restrict__ w, u16* __restrict__ out,
                                                      u32 rows, u32 dim, float eps, u32 kind) {
    pdl_start();
    const u32 row = blockIdx.x;
    if (row >= rows) return;
    float* xr = x + (u64)row * dim;
    float ss = row_sum_squares<ADD>(xr, ADD ? y + (u64)row * dim : nullptr, dim);
    ss = block_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    u16* o = out + (u64)row * dim;
    row_scale(xr, w, inv, dim, [&](u32 i, float v) { o[i] = f32_to_half(v, kind); });
}

extern "C" __global__ void add_rms_norm_half(float* __restrict__ x, const float* __restrict__ y,
                                             const float* __restrict__ w, u16* __restrict__ out,
                                             u32 rows, u32 dim, float eps, u32 kind) {
    add_rms_norm_half_row<true>(x, y, w, out, rows, dim, eps, kind);
}

extern "C" __global__ void rms_norm_half(float* __restrict__ x, const float* __restrict__ w,
                                         u16* __restrict__ out, u32 rows, u32 dim, float eps, u32 kind) {
    add_rms_norm_half_row<false>(x, nullptr, w, out, rows, dim, eps, kind);
}

// silu_mul_fused_f32 with a 16-bit output (n = rows * inter).
extern "C" __global__ void silu_mul_fused_half(const float* __restrict__ gu, u16* __restrict__ out, u64 n,
                                               u32 inter, u32 kind) {
    pdl_start();
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f32_to_half(silu_mul_fused_at(gu, i, inter), kind);
}

// Grid (rows, heads + 2 kv_heads), 256 threads (head_dim <= 256, even): block (r, h) copies head
// h of row r of qkv [rows, (heads + 2 kv_heads) * head_dim] into q, k or v; q and k heads are
// rotated (rope_f32's arithmetic: thread i < half writes x0 c - x1 s, thread i + half writes
// x1 c + x0 s) and, with has_norm, RMS-normed over the head (rms_norm_f32's arithmetic: one
// element per thread, block_sum).
extern "C" __global__ void qkv_rope_norm_f32(const float* __restrict__ qkv, const u32* __restrict__ pos,
                                             const float* __restrict__ inv_freq,
                                             const float* __restrict__ q_norm,
                                             const float* __restrict__ k_norm, float* __restrict__ q,
                                             float* __restrict__ k, float* __restrict__ v, u32 heads,
                                             u32 kv_heads, u32 head_dim, float eps, u32 has_norm) {
    pdl_start();
    const u32 r = blockIdx.x, h = blockIdx.y, i = threadIdx.x;
    const u64 qw = (u64)heads * head_dim, kvw = (u64)kv_heads * head_dim;
    const float* src = qkv + (u64)r * (qw + 2 * kvw) + (u64)h * head_dim;
    if (h >= heads + kv_heads) {  // a v head: copied (uniform across the block)
        if (i < head_dim) v[(u64)r * kvw + (u64)(h - heads - kv_heads) * head_dim + i] = src[i];
        return;
    }
    const bool is_q = h < heads;
    float* dst = is_q ? q + (u64)r * qw + (u64)h * head_dim : k + (u64)r * kvw + (u64)(h - heads) * head_dim;
    const u32 half = head_dim / 2;
    float val = 0.0f;
    if (i < head_dim) {
        const u32 j = i < half ? i : i - half;
        const float a = __fmul_rn((float)pos[r], inv_freq[j]);
        const float c = (float)cos((double)a), s = (float)sin((double)a);
        const float x0 = src[j], x1 = src[j + half];
        val = i < half ? x0 * c - x1 * s : x1 * c + x0 * s;
    }
    if (!has_norm) {  // uniform across the block
        if (i < head_dim) dst[i] = val;
        return;
    }
    float ss = 0.0f;
    if (i < head_dim) ss += val * val;
    ss = block_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)head_dim + eps);
    if (i < head_dim) dst[i] = (val * inv) * (is_q ? q_norm : k_norm)[i];
}
