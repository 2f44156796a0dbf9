#!/usr/bin/env python3
"""Straightforward PyTorch GPTQ (CPU), the reference for hy-quant's `src/quant/gptq.rs`.

Written from the pseudocode of Frantar et al. 2022 ("GPTQ", Algorithm 1), with the conventions
of the reference implementation IST-DASLab/gptq `gptq.py` (`add_batch`, `fasterquant`) and
AutoGPTQ `static_groups`, and hy-quant's grid (`src/quant/grid.rs`):

* H = 2/n X^T X (float64), dead inputs (H[i,i] == 0): H[i,i] = 1, W[:, i] = 0;
* act order: columns by descending diag(H) (stable sort, ties keep their order);
* damping lambda = damp * mean(diag H); Cholesky failure -> retry with 10x damp (4 times);
* U = cholesky(cholesky_inverse(cholesky(H)), upper=True), in float64, then float32;
* sweep in float32, blocks of 128 columns with lazy updates of the later columns;
* dynamic groups fitted on W as it stands at the start of the block holding the group's first
  column (as gptq.py); static groups (and the per-channel grid) fitted up front on the
  dead-zeroed original W;
* min/max grid: range includes 0; sym: scale = 2 max|w| / maxq, zero = (maxq+1)/2;
  asym: zero = round(-min/scale), and a zero of 0 (not storable in GPTQ v1) becomes 1 with
  scale = max/(maxq-1); scale rounded to bf16 before the integers are chosen; round() is
  half-to-even (torch.round).

Usage:
  gptq_reference.py quantize --inputs in.safetensors (tensors "weight" [N,K], "x" [rows,K])
                    | --weight w.npy --x x.npy
                    --bits 4 --group-size 128 [--asym] [--act-order none|permute|static]
                    [--damp 0.01] [--block-size 128] --out out.safetensors
      writes q (uint8 levels [N,K]), scales (f32 [G,N]), zeros (int32 [G,N]), g_idx (int32 [K]),
      wq (f32 dequantized [N,K]), metadata output_error / loss / damp_used.
  gptq_reference.py make-test-data --out tests/data/gptq_ref
      writes the inputs and the reference results `tests/gptq_reference.rs` compares against.
"""
import argparse
import json
import os

import numpy as np
import torch
from safetensors.torch import load_file, save_file

BF16_MIN_POSITIVE = torch.tensor([1], dtype=torch.int16).view(torch.bfloat16).float().item()


def fit_grid(w, bits, sym):
    """w: [N, g] float32 -> (scale [N], zero [N]) float32."""
    maxq = float(2**bits - 1)
    lo = torch.clamp(w.min(dim=1).values, max=0.0)
    hi = torch.clamp(w.max(dim=1).values, min=0.0)
    if sym:
        hi = torch.maximum(hi, -lo)
        lo = torch.where(lo < 0, -hi, lo)
    empty = (lo == 0) & (hi == 0)
    lo = torch.where(empty, torch.full_like(lo, -1.0), lo)
    hi = torch.where(empty, torch.full_like(hi, 1.0), hi)
    scale = (hi - lo) / maxq
    if sym:
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
    else:
        zero = torch.round(-lo / scale)
        bad = zero == 0
        zero = torch.where(bad, torch.ones_like(zero), zero)
        scale = torch.where(bad, hi / (maxq - 1.0), scale)
    scale = scale.to(torch.bfloat16).float()
    scale = torch.where(scale > 0, scale, torch.full_like(scale, BF16_MIN_POSITIVE))
    return scale, zero


def quantize(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return q, scale * (q - zero)


def hessian(x):
    x = x.double()
    return 2.0 / x.shape[0] * (x.t() @ x)


def gptq(w, H, bits, group_size, sym, act_order="none", damp=0.01, block_size=128):
    """w: [N,K] float32, H: [K,K] float64. Returns dict of results in original column order."""
    N, K = w.shape
    maxq = float(2**bits - 1)
    W = w.clone().float()
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    glen = K if group_size == -1 else min(group_size, K)
    G = (K + glen - 1) // glen
    up_front = group_size == -1 or act_order == "static"

    static_params = None
    if up_front:
        static_params = [fit_grid(W[:, g * glen:(g + 1) * glen], bits, sym) for g in range(G)]

    perm = torch.arange(K)
    if act_order != "none":
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W = W[:, perm]
        H = H[perm][:, perm]

    mean_diag = torch.mean(torch.diag(H)).item()
    d = damp
    retries = 0
    while True:
        Hd = H + d * mean_diag * torch.eye(K, dtype=H.dtype)
        L, info = torch.linalg.cholesky_ex(Hd)
        if info.item() == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info.item() == 0:
                break
        if retries == 4:
            raise RuntimeError(f"Cholesky failed with damp up to {d}")
        retries += 1
        d = d * 10.0 if d > 0 else 1e-6
    U = U.float()

    Q = torch.zeros(N, K)  # levels, sweep order
    Wq = torch.zeros(N, K)  # dequantized, sweep order
    col_group = [(i // glen) if not up_front else (perm[i].item() // glen) for i in range(K)]
    scales = torch.zeros(G, N)
    zeros = torch.zeros(G, N)
    if up_front:
        for g, (sc, z) in enumerate(static_params):
            scales[g], zeros[g] = sc, z
    losses = torch.zeros(N, K, dtype=torch.float64)

    for i1 in range(0, K, block_size):
        i2 = min(i1 + block_size, K)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros(N, i2 - i1)
        for i in range(i2 - i1):
            j = i1 + i
            if not up_front and j % glen == 0:
                # fitted on W (block-start values), not on W1
                scales[j // glen], zeros[j // glen] = fit_grid(W[:, j:j + glen], bits, sym)
            g = col_group[j]
            x = W1[:, i]
            q, dq = quantize(x, scales[g], zeros[g], maxq)
            Q[:, j] = q
            Wq[:, j] = dq
            dd = U[j, j]
            losses[:, j] = ((x - dq).double() / dd.double()) ** 2 / 2
            e = (x - dq) / dd
            W1[:, i:] -= e.unsqueeze(1) @ U[j, i1 + i:i2].unsqueeze(0)
            Err1[:, i] = e
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]

    invperm = torch.argsort(perm)
    g_idx = torch.tensor(col_group, dtype=torch.int32)
    return {
        "q": Q[:, invperm].to(torch.uint8),
        "wq": Wq[:, invperm].contiguous(),
        "scales": scales.contiguous(),
        "zeros": zeros.to(torch.int32).contiguous(),
        "g_idx": g_idx[invperm].contiguous(),
        "loss": losses.sum().item(),
        "damp_used": d,
        "retries": retries,
    }


def output_error(w, wq, H):
    D = (w.double() - wq.double())
    W = w.double()
    return (torch.trace(D @ H @ D.t()) / torch.trace(W @ H @ W.t())).item()


def run_quantize(args):
    if args.inputs:
        t = load_file(args.inputs)
        w, x = t["weight"].float(), t["x"].float()
    else:
        w = torch.from_numpy(np.load(args.weight)).float()
        x = torch.from_numpy(np.load(args.x)).float()
    H = hessian(x)
    r = gptq(w, H, args.bits, args.group_size, not args.asym, args.act_order, args.damp, args.block_size)
    err = output_error(w, r["wq"], H)
    meta = {"output_error": repr(err), "loss": repr(r["loss"]), "damp_used": repr(r["damp_used"])}
    save_file({k: r[k] for k in ["q", "wq", "scales", "zeros", "g_idx"]}, args.out, metadata=meta)
    print(json.dumps({"output_error": err, "loss": r["loss"], "damp_used": r["damp_used"]}))


CONFIGS = [
    # (name, bits, group_size, sym, act_order)
    ("int4_g128_sym_none", 4, 128, True, "none"),
    ("int4_g32_asym_none", 4, 32, False, "none"),
    ("int4_g64_sym_permute", 4, 64, True, "permute"),
    ("int4_g32_asym_permute", 4, 32, False, "permute"),
    ("int4_g64_asym_static", 4, 64, False, "static"),
    ("int4_gm1_sym_none", 4, -1, True, "none"),
    ("int8_g128_sym_none", 8, 128, True, "none"),
    ("int8_gm1_asym_permute", 8, -1, False, "permute"),
]


def make_test_data(out):
    os.makedirs(out, exist_ok=True)
    g = np.random.default_rng(20240611)
    N, K, rows = 64, 256, 512
    # Correlated activations: a few dominant directions, per-channel scales, outlier channels,
    # and one dead input (exactly zero on every row).
    z = g.standard_normal((rows, 6)) * np.array([3, 2, 1.5, 1, 0.7, 0.5])
    a = g.standard_normal((6, K))
    x = z @ a + g.standard_normal((rows, K)) * g.uniform(0.3, 1.5, K)
    x[:, [17, 90, 201]] *= 6.0
    x[:, 5] = 0.0
    w = g.standard_normal((N, K)) * 0.04
    w[g.random((N, K)) < 0.01] *= 6.0
    x = torch.from_numpy(x).to(torch.bfloat16)
    w = torch.from_numpy(w).to(torch.bfloat16)
    save_file({"weight": w, "x": x}, os.path.join(out, "inputs.safetensors"))
    H = hessian(x.float())
    tensors, meta = {}, []
    for name, bits, gs, sym, ao in CONFIGS:
        r = gptq(w.float(), H, bits, gs, sym, ao)
        err = output_error(w.float(), r["wq"], H)
        for k in ["q", "scales", "zeros", "g_idx"]:
            tensors[f"{name}.{k}"] = r[k]
        meta.append({"name": name, "bits": bits, "group_size": gs, "sym": sym, "act_order": ao,
                     "damp": 0.01, "block_size": 128, "output_error": err, "loss": r["loss"],
                     "damp_used": r["damp_used"]})
        print(f"{name}: output_error {err:.6g} loss {r['loss']:.6g}")
    save_file(tensors, os.path.join(out, "outputs.safetensors"))
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({"generator": "scripts/gptq_reference.py make-test-data", "torch": torch.__version__,
                   "configs": meta}, f, indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quantize")
    q.add_argument("--inputs")
    q.add_argument("--weight")
    q.add_argument("--x")
    q.add_argument("--bits", type=int, default=4)
    q.add_argument("--group-size", type=int, default=128)
    q.add_argument("--asym", action="store_true")
    q.add_argument("--act-order", choices=["none", "permute", "static"], default="none")
    q.add_argument("--damp", type=float, default=0.01)
    q.add_argument("--block-size", type=int, default=128)
    q.add_argument("--out", required=True)
    m = sub.add_parser("make-test-data")
    m.add_argument("--out", default="tests/data/gptq_ref")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.cmd == "quantize":
        if not args.inputs and not (args.weight and args.x):
            p.error("quantize needs --inputs, or --weight and --x")
        run_quantize(args)
    else:
        make_test_data(args.out)


if __name__ == "__main__":
    main()
