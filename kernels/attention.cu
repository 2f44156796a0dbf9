// Causal grouped-query attention over a slot-based KV cache, fused: one block per (head, row),
// ATT_WARPS warps split the keys, each keeps an online softmax (running max m, sum l and the
// weighted sum of values in registers), and the warps are merged at the end in a fixed order.
// No score matrix is ever written to global memory, whatever the context length.
// Online softmax: Milakov & Gimelshein 2018, "Online normalizer calculation for softmax";
// the same merge rule as FlashAttention (Dao et al. 2022).
//
// q [rows, heads*head_dim] f32, caches [n_slots, max_len, kv_heads*head_dim] in the model's
// 16-bit type (kind: 0 = f16, 1 = bf16, as half_to_f32), out like q. Keys and values are
// widened to f32 as they are loaded; all arithmetic is f32.
// head_dim is a multiple of 32 up to 256: lane l holds dimensions l, l+32, ...

// 16 warps: a decode row's few dozen keys take 2-3 steps per warp instead of 8 (each step
// waits a memory latency; 4 warps took ~16 us per layer at ~30 keys on an H200, docs/cuda.md).
#define ATT_WARPS 16
#define ATT_MAX_CHUNKS 8

// Keys [split * chunk, (split + 1) * chunk) of the row's context, split = blockIdx.z. With one
// split (gridDim.z == 1) the block writes the normalized output to `out`; with several it
// writes its running max, sum and unnormalized weighted values to `part`
// [rows, heads, splits, head_dim + 2] and attention_merge_f32 combines the splits in order
// (split-K over the context for decode rows, as flash-decoding does).
extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32)
attention_half(const float* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc,
               const u32* __restrict__ slots, const u32* __restrict__ pos, float* __restrict__ out,
               float* __restrict__ part, u32 heads, u32 kv_heads, u32 head_dim, u32 max_len,
               u32 n_slots, float scale, u32 chunk, u32 kind) {
    pdl_start();
    __shared__ float sm[ATT_WARPS], sl[ATT_WARPS];
    __shared__ float sacc[ATT_WARPS][256];
    const u32 h = blockIdx.x, r = blockIdx.y;
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const u32 group = heads / kv_heads, kvh = h / group;
    const u32 qd = heads * head_dim, kvd = kv_heads * head_dim;
    const u32 chunks = head_dim / 32;
    const u32 slot = slots[r];
    u32 ctx = pos[r] + 1;
    if (ctx > max_len) ctx = max_len;
    if (slot >= n_slots) ctx = 0;
    const float* qr = q + (u64)r * qd + (u64)h * head_dim;
    const u64 base = (u64)slot * max_len * kvd + (u64)kvh * head_dim;

    float qv[ATT_MAX_CHUNKS], acc[ATT_MAX_CHUNKS];
#pragma unroll
    for (u32 c = 0; c < ATT_MAX_CHUNKS; ++c) {
        qv[c] = c < chunks ? qr[lane + 32 * c] : 0.0f;
        acc[c] = 0.0f;
    }
    float m = -__int_as_float(0x7f800000), l = 0.0f;
    const u32 split = blockIdx.z, splits = gridDim.z;
    const u32 j_end = min(ctx, (split + 1) * chunk);
    for (u32 j = split * chunk + warp; j < j_end; j += ATT_WARPS) {
        const u16* kr = kc + base + (u64)j * kvd;
        const u16* vr = vc + base + (u64)j * kvd;
        float d = 0.0f;
#pragma unroll
        for (u32 c = 0; c < ATT_MAX_CHUNKS; ++c)
            if (c < chunks) d += qv[c] * half_to_f32(kr[lane + 32 * c], kind);
        const float s = warp_sum(d) * scale;
        const float mn = fmaxf(m, s);
        const float corr = expf(m - mn);  // 0 on the first key (m = -inf)
        const float p = expf(s - mn);
        l = l * corr + p;
#pragma unroll
        for (u32 c = 0; c < ATT_MAX_CHUNKS; ++c)
            if (c < chunks) acc[c] = acc[c] * corr + p * half_to_f32(vr[lane + 32 * c], kind);
        m = mn;
    }
    if (lane == 0) { sm[warp] = m; sl[warp] = l; }
#pragma unroll
    for (u32 c = 0; c < ATT_MAX_CHUNKS; ++c)
        if (c < chunks) sacc[warp][lane + 32 * c] = acc[c];
    __syncthreads();
    float big = -__int_as_float(0x7f800000);
    for (u32 w = 0; w < ATT_WARPS; ++w) big = fmaxf(big, sm[w]);
    float total = 0.0f;
    float wt[ATT_WARPS];
    for (u32 w = 0; w < ATT_WARPS; ++w) {
        // A warp that saw no key has m = -inf and l = 0: weight 0.
        wt[w] = sl[w] > 0.0f ? expf(sm[w] - big) : 0.0f;
        total += sl[w] * wt[w];
    }
    if (splits == 1) {
        float* o = out + (u64)r * qd + (u64)h * head_dim;
        for (u32 d = threadIdx.x; d < head_dim; d += blockDim.x) {
            float v = 0.0f;
            for (u32 w = 0; w < ATT_WARPS; ++w) v += sacc[w][d] * wt[w];
            o[d] = total > 0.0f ? v / total : 0.0f;
        }
    } else {
        float* p = part + (((u64)r * heads + h) * splits + split) * (head_dim + 2);
        if (threadIdx.x == 0) {
            p[0] = big;
            p[1] = total;
        }
        for (u32 d = threadIdx.x; d < head_dim; d += blockDim.x) {
            float v = 0.0f;
            for (u32 w = 0; w < ATT_WARPS; ++w) v += sacc[w][d] * wt[w];
            p[2 + d] = v;
        }
    }
}

// One block per (head, row): combines the splits of attention_half in split order.
extern "C" __global__ void attention_merge_f32(const float* __restrict__ part, float* __restrict__ out,
                                               u32 heads, u32 head_dim, u32 splits) {
    pdl_start();
    const u32 h = blockIdx.x, r = blockIdx.y;
    const float* p = part + ((u64)r * heads + h) * splits * (head_dim + 2);
    float big = -__int_as_float(0x7f800000);
    for (u32 s = 0; s < splits; ++s)
        if (p[s * (head_dim + 2) + 1] > 0.0f) big = fmaxf(big, p[s * (head_dim + 2)]);
    float total = 0.0f;
    for (u32 s = 0; s < splits; ++s) {
        const float l = p[s * (head_dim + 2) + 1];
        if (l > 0.0f) total += l * expf(p[s * (head_dim + 2)] - big);
    }
    float* o = out + (u64)r * heads * head_dim + (u64)h * head_dim;
    for (u32 d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float v = 0.0f;
        for (u32 s = 0; s < splits; ++s) {
            const float l = p[s * (head_dim + 2) + 1];
            if (l > 0.0f) v += p[s * (head_dim + 2) + 2 + d] * expf(p[s * (head_dim + 2)] - big);
        }
        o[d] = total > 0.0f ? v / total : 0.0f;
    }
}
