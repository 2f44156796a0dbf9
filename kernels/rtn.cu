// Round-to-nearest quantization of one linear, byte-identical to the CPU path
// (src/quant/grid.rs GroupParams::fit / quantize, src/quant/rtn.rs): the same f32 operations
// in the same order, each with an explicit round-to-nearest intrinsic so nothing is contracted
// into an FMA or reassociated. min/max are exact in any order, so the warp reduction changes
// nothing.
//
// One warp per (row n, group g). Outputs: q [N, K] levels as bytes, scales/zeros [G, N],
// *overflow = 1 when a stored scale is not finite (the host then reports the CPU's error).

extern "C" __global__ void rtn_quantize(const float* __restrict__ w, unsigned char* __restrict__ q,
                                        float* __restrict__ scales, u32* __restrict__ zeros,
                                        u32* __restrict__ overflow, u32 n_out, u32 k_in, u32 glen,
                                        u32 groups, u32 bits, u32 sym, u32 store) {
    const u64 warp_id = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const u32 lane = threadIdx.x & 31u;
    if (warp_id >= (u64)n_out * groups) return;  // whole warps leave together
    const u32 n = (u32)(warp_id / groups), g = (u32)(warp_id % groups);
    const u32 k0 = g * glen;
    const u32 len = min(glen, k_in - k0);
    const float* row = w + (u64)n * k_in + k0;

    float lo = 0.0f, hi = 0.0f;
    for (u32 i = lane; i < len; i += 32u) {
        const float v = row[i];
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
        hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
    }
    const float maxq = (float)((1u << bits) - 1u);
    if (sym) {
        hi = fmaxf(hi, -lo);
        if (lo < 0.0f) lo = -hi;
    }
    if (lo == 0.0f && hi == 0.0f) {
        lo = -1.0f;
        hi = 1.0f;
    }
    float scale = __fdiv_rn(__fsub_rn(hi, lo), maxq);
    u32 zero = sym ? (1u << (bits - 1u)) : grid_f32_as_u32(grid_round_half_even(__fdiv_rn(-lo, scale)));
    if (!sym && zero == 0u) {
        zero = 1u;
        scale = __fdiv_rn(hi, __fsub_rn(maxq, 1.0f));
    }
    const float stored = grid_store_round(scale, store);
    if (!isfinite(stored)) {
        if (lane == 0) *overflow = 1u;
        return;
    }
    scale = stored > 0.0f ? stored : grid_store_min_positive(store);
    const float zf = (float)zero;
    unsigned char* qr = q + (u64)n * k_in + k0;
    for (u32 i = lane; i < len; i += 32u) {
        const float v = __fadd_rn(grid_round_half_even(__fdiv_rn(row[i], scale)), zf);
        qr[i] = (unsigned char)grid_f32_as_u32(fminf(fmaxf(v, 0.0f), maxq));
    }
    if (lane == 0) {
        scales[(u64)g * n_out + n] = scale;
        zeros[(u64)g * n_out + n] = zero;
    }
}
