#!/usr/bin/env python3
"""Lane-level model of the decode kernel `gptq_gemv` in kernels/gptq.cu, run without a GPU.

It follows the kernel step by step (blocks, warps, lanes, the load step, group tracking, the
shared-memory x slice and its offsets, the half2 / f32 dequantization bit for bit, the warp and
split sums) and emulates mma.m16n8k16 from the fragment layouts the PTX ISA documents
("Matrix Fragments for mma.m16n8k16 with floating point type"), independently of the kernel's
own reasoning about which k sits in which slot. The result must equal x . W^T with
W = half(scale * (q - zero)) exactly (all products and sums here are exact in f64).
It also checks that the block's x staging loop copies every 16-byte chunk once.

    pip install numpy; python3 scripts/check_gptq_gemv_model.py     # ~10 s

Keep it in step with the kernel when the kernel changes. Slow: small shapes only."""
import random
import struct
import numpy as np

def f32_bits(v): return struct.unpack('<I', struct.pack('<f', v))[0]
def bits_f32(b): return struct.unpack('<f', struct.pack('<I', b & 0xffffffff))[0]

def half_to_f(bits, kind):
    bits &= 0xffff
    if kind == 1: return bits_f32(bits << 16)
    return float(np.array([bits], dtype=np.uint16).view(np.float16)[0])

def f_to_half(v, kind):
    # v must be exactly representable in f32 (true in every use here)
    if kind == 1:
        u = f32_bits(np.float32(v))
        assert float(np.float32(v)) == v or v != v, v
        if (u & 0x7fffffff) > 0x7f800000: return ((u >> 16) | 0x40) & 0xffff
        u = (u + 0x7fff + ((u >> 16) & 1)) & 0xffffffff
        return u >> 16
    return int(np.array([v], dtype=np.float16).view(np.uint16)[0])

def hfma2(a, b, c, kind):
    out = 0
    for h in range(2):
        av, bv, cv = (half_to_f((x >> (16 * h)) & 0xffff, kind) for x in (a, b, c))
        r = av * bv + cv  # exact in f64 for our operands
        rb = f_to_half(r, kind) if r != 0 else (0x8000 if (np.copysign(1, av * bv) < 0 and np.copysign(1, cv) < 0) else 0)
        out |= rb << (16 * h)
    return out

def prmt(a, b, sel):
    bytes_ = [(a >> (8 * i)) & 0xff for i in range(4)] + [(b >> (8 * i)) & 0xff for i in range(4)]
    r = 0
    for i in range(4):
        r |= bytes_[(sel >> (4 * i)) & 7] << (8 * i)
    return r

def pack_half2(lo, hi, kind):
    return f_to_half(lo, kind) | (f_to_half(hi, kind) << 16)

def mma(acc, a, b, kind):
    """acc[lane] = [4 floats], a[lane] = 4 u32, b[lane] = 2 u32 (m16n8k16, row.col)."""
    A = [[0.0] * 16 for _ in range(16)]
    B = [[0.0] * 8 for _ in range(16)]
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        def halves(r): return half_to_f(r & 0xffff, kind), half_to_f(r >> 16, kind)
        A[g][2*t], A[g][2*t+1] = halves(a[lane][0])
        A[g+8][2*t], A[g+8][2*t+1] = halves(a[lane][1])
        A[g][2*t+8], A[g][2*t+9] = halves(a[lane][2])
        A[g+8][2*t+8], A[g+8][2*t+9] = halves(a[lane][3])
        B[2*t][g], B[2*t+1][g] = halves(b[lane][0])
        B[2*t+8][g], B[2*t+9][g] = halves(b[lane][1])
    D = np.array(A) @ np.array(B)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        acc[lane][0] += D[g][2*t]; acc[lane][1] += D[g][2*t+1]
        acc[lane][2] += D[g+8][2*t]; acc[lane][3] += D[g+8][2*t+1]

GV_WARPS, GV_UNROLL, GV_COLS = 8, 4, 32

def group_consts(bits, kind, sraw, zword, zshift):
    sbits = [sraw[0] & 0xffff, sraw[0] >> 16, sraw[1] & 0xffff, sraw[1] >> 16]
    ca, cb = [0]*4, [0]*4
    for c in range(4):
        z = ((zword >> (zshift + bits * c)) & ((1 << bits) - 1)) + 1
        if bits == 4:
            bias = 0x4300 if kind == 1 else 0x6400
            ca[c] = (sbits[c] * 0x10001) & 0xffffffff
            cb[c] = (((bias + z) | 0x8000) * 0x10001) & 0xffffffff
        else:
            ca[c] = f32_bits(half_to_f(sbits[c], kind))
            cb[c] = f32_bits(-bits_f32(0x4b000000 + z))
    return ca, cb

def dequant_word(bits, kind, w, ca, cb, bias2):
    if bits == 4:
        one2 = 0x3f803f80 if kind == 1 else 0x3c003c00
        h = []
        for i in range(4):
            t = ((w >> (4 * i)) & 0x000f000f) | bias2
            h.append(hfma2(hfma2(t, one2, cb, kind), ca, 0x80008000, kind))
        return h
    s, nz = np.float32(bits_f32(ca)), np.float32(bits_f32(cb))
    h = []
    for i in range(2):
        lo = (np.float32(bits_f32(prmt(w, 0x4b000000, 0x7440 + i))) + nz) * s
        hi = (np.float32(bits_f32(prmt(w, 0x4b000000, 0x7442 + i))) + nz) * s
        h.append(pack_half2(float(lo), float(hi), kind))
    return h

def gemv(bits, MB, kind, x, qweight, qzeros, scales, m, N, K, group_len, qps):
    PF = 32 // bits; KQ = 4 * PF; HP = PF // 2; KSTEPS = PF // 4; NB = MB // 8
    quads = K // KQ
    splits = -(-quads // qps)
    out = [[None] * N for _ in range(m)]
    part = {}
    for by in range(splits):
        for bx in range(N // GV_COLS):
            q_lo = min(quads, by * qps); q_hi = min(quads, q_lo + qps)
            k_base, k_len = q_lo * KQ, (q_hi - q_lo) * KQ
            xstride = ((k_len + 63) & ~63) + KQ
            xs = [0] * (m * xstride)
            for b in range(m):
                for kk in range(k_len):
                    xs[b * xstride + kk] = x[b][k_base + kk]
            n0 = bx * GV_COLS
            red = {}
            for warp in range(GV_WARPS):
                per_warp = ((q_hi - q_lo + GV_WARPS - 1) // GV_WARPS + GV_UNROLL - 1) // GV_UNROLL * GV_UNROLL
                qb = min(q_hi, q_lo + warp * per_warp); qe = min(q_hi, qb + per_warp)
                qpg = group_len // KQ
                lanes = []
                for lane in range(32):
                    gid, tig = lane >> 2, lane & 3
                    n = n0 + 4 * gid
                    L = dict(gid=gid, tig=tig, n=n, zshift=(n % 8) * 4 if bits == 4 else 0,
                             acc=[[[0.0]*4 for _ in range(NB)] for _ in range(2)],
                             w_off=(4*qb + tig) * N + n,
                             g_next=(qb // qpg + 1) * qpg, s_off=qb // qpg * N + n, z_off=qb // qpg * (N // PF) + n // PF,
                             ca=[None]*4, cb=[None]*4,
                             x_off=[min(bg*8 + gid, m - 1) * xstride + (4*qb + tig) * PF - k_base for bg in range(NB)])
                    lanes.append(L)
                bias2 = 0x43004300 if kind == 1 else 0x64006400
                q = qb
                while q < qe:
                    for L in lanes:  # load_step
                        L['new'] = 1 if q == qb else 0
                        L['wq'], L['sr'], L['zr'] = [None]*4, [None]*4, [None]*4
                        for u in range(GV_UNROLL):
                            quad = q + u
                            if quad >= qe: break
                            if quad >= L['g_next']:
                                L['g_next'] += qpg; L['s_off'] += N; L['z_off'] += N // PF; L['new'] |= 1 << u
                            L['wq'][u] = [qweight[L['w_off'] + c] for c in range(4)]
                            L['w_off'] += 4 * N
                            if L['new'] & (1 << u):
                                so = L['s_off']
                                L['sr'][u] = (scales[so] | (scales[so+1] << 16), scales[so+2] | (scales[so+3] << 16))
                                L['zr'][u] = qzeros[L['z_off']]
                    for u in range(GV_UNROLL):
                        if q + u >= qe: break
                        hs = []
                        for L in lanes:
                            if L['new'] & (1 << u):
                                L['ca'], L['cb'] = group_consts(bits, kind, L['sr'][u], L['zr'][u], L['zshift'])
                            hs.append([dequant_word(bits, kind, L['wq'][u][c], L['ca'][c], L['cb'][c], bias2) for c in range(4)])
                        for bg in range(NB):
                            xvs = []
                            for L in lanes:
                                o = L['x_off'][bg]
                                hv = xs[o:o + PF]
                                xvs.append([hv[2*j] | (hv[2*j+1] << 16) for j in range(HP)])
                                L['x_off'][bg] += 4 * PF
                            for s in range(KSTEPS):
                                B = [(prmt(xv[s], xv[s+KSTEPS], 0x5410), prmt(xv[s], xv[s+KSTEPS], 0x7632)) for xv in xvs]
                                for t in range(2):
                                    A = [(h[2*t][2*s], h[2*t+1][2*s], h[2*t][2*s+1], h[2*t+1][2*s+1]) for h in hs]
                                    accs = [L['acc'][t][bg] for L in lanes]
                                    mma(accs, A, B, kind)
                    q += GV_UNROLL
                for L in lanes:
                    for t in range(2):
                        for bg in range(NB):
                            for e in range(4):
                                key = (warp, bg*8 + 2*L['tig'] + (e & 1), 4*L['gid'] + 2*t + (e >> 1))
                                assert key not in red
                                red[key] = L['acc'][t][bg][e]
            for b in range(m):
                for col in range(GV_COLS):
                    ssum = sum(red[(w, b, col)] for w in range(GV_WARPS))
                    part[(by, b, n0 + col)] = ssum
    for b in range(m):
        for n in range(N):
            out[b][n] = sum(part[(sp, b, n)] for sp in range(splits))
    return out

def run(bits, kind, m, N, K, group_len, qps, seed):
    rnd = random.Random(seed)
    PF = 32 // bits; G = -(-K // group_len); maxq = (1 << bits) - 1
    q = [[rnd.randint(0, maxq) for _ in range(K)] for _ in range(N)]
    zst = [[rnd.randint(0, maxq) for _ in range(N)] for _ in range(G)]  # stored zero - 1 (incl. 2^b-1)
    # scales as half bit patterns: f16 by numpy's rounding, bf16 by truncating an f32
    def scale_bits():
        v = rnd.uniform(-0.03, 0.03)
        if kind == 1: return f32_bits(v) >> 16
        return int(np.array([np.float16(v)]).view(np.uint16)[0])
    sc = [[scale_bits() for _ in range(N)] for _ in range(G)]
    # a tiny scale (subnormal half results) and a zero scale
    sc[0][0] = 0x0001 if kind == 0 else 0x0080
    sc[-1][1] = 0
    qweight = [0] * ((K // PF) * N)
    for r in range(K // PF):
        for n in range(N):
            w = 0
            for j in range(PF): w |= q[n][r*PF + j] << (bits * j)
            qweight[r * N + n] = w
    qzeros = [0] * (G * (N // PF))
    for g in range(G):
        for n in range(N):
            qzeros[g * (N // PF) + n // PF] |= zst[g][n] << (bits * (n % PF))
    scales = [sc[g][n] for g in range(G) for n in range(N)]
    def x_bits():
        v = rnd.gauss(0, 1)
        if kind == 1: return f32_bits(v) >> 16
        return int(np.array([np.float16(v)]).view(np.uint16)[0])
    xh = [[x_bits() for _ in range(K)] for _ in range(m)]
    # reference: W = half(s * (q - z)) via f32, x . W^T in f64
    W = [[half_to_f(f_to_half(float(np.float32(half_to_f(sc[k // group_len][n], kind)) * np.float32(q[n][k] - (zst[k // group_len][n] + 1))), kind), kind) for k in range(K)] for n in range(N)]
    X = [[half_to_f(v, kind) for v in row] for row in xh]
    ref = np.array(X) @ np.array(W).T
    MB = 8 if m <= 8 else 16
    got = np.array(gemv(bits, MB, kind, xh, qweight, qzeros, scales, m, N, K, group_len, qps))
    err = np.abs(got - ref).max()
    print(f"bits={bits} kind={kind} m={m} N={N} K={K} g={group_len} qps={qps}: max err {err:.3e} (ref max {np.abs(ref).max():.3e})")
    assert err < 1e-9, err

def check_staging():
    """The x staging loop of gptq_gemv: thread t copies chunks t, t + 256, ... of m x per_row."""
    for per_row in [8, 16, 24, 40, 64, 128, 200, 256, 300, 512, 1000]:
        for m in [1, 2, 3, 8, 9, 16]:
            seen = set()
            db, dc = 256 // per_row, 256 % per_row
            for t in range(256):
                b, c = t // per_row, t % per_row
                while b < m:
                    lb, lc, loads, stores = b, c, [], []
                    for _ in range(4):
                        if lb < m: loads.append((lb, lc))
                        lb += db; lc += dc
                        if lc >= per_row: lc -= per_row; lb += 1
                    for _ in range(4):
                        if b < m: stores.append((b, c))
                        b += db; c += dc
                        if c >= per_row: c -= per_row; b += 1
                    assert loads == stores
                    for k in stores:
                        assert k not in seen
                        seen.add(k)
            assert len(seen) == m * per_row and all(0 <= c < per_row for _, c in seen)
    print("x staging: every chunk copied once")

if __name__ == '__main__':
    check_staging()
    cases = [
        (4, 1, 1, 64, 256, 128, 4), (4, 0, 3, 32, 256, 32, 8), (4, 1, 9, 32, 512, 64, 16),
        (4, 0, 16, 64, 256, 256, 32), (8, 1, 2, 32, 256, 128, 4), (8, 0, 12, 32, 256, 16, 8),
        (4, 1, 5, 32, 384, 128, 12), (8, 1, 1, 64, 512, 512, 64),
        # several warps with two steps, several groups per step, one split
        (4, 1, 1, 32, 2048, 32, 64), (4, 0, 16, 32, 2048, 128, 32), (8, 1, 4, 32, 2048, 128, 128),
        (4, 1, 3, 32, 1024, 1024, 128),
    ]
    for i, c in enumerate(cases):
        run(*c, seed=1000 + i)
    print("gptq_gemv model: all cases exact")
