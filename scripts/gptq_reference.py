#!/usr/bin/env python3
"""Straightforward PyTorch GPTQ, the reference for hy-quant's `src/quant/gptq.rs` (one linear, on
the CPU) and the baseline for its speed (`loop`: the whole layer loop, on a GPU).

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
  half-to-even (torch.round);
* `--clip-search` (hy-quant's default): each group's range by the shrink search of
  `quant.py` `find_params(mse=True)`, see CLIP_GRID below.

Usage:
  gptq_reference.py quantize --inputs in.safetensors (tensors "weight" [N,K], "x" [rows,K])
                    | --weight w.npy --x x.npy
                    --bits 4 --group-size 128 [--asym] [--act-order none|permute|static]
                    [--clip-search] [--damp 0.01] [--block-size 128] --out out.safetensors
      writes q (uint8 levels [N,K]), scales (f32 [G,N]), zeros (int32 [G,N]), g_idx (int32 [K]),
      wq (f32 dequantized [N,K]), metadata output_error / loss / damp_used.
  gptq_reference.py make-test-data --out tests/data/gptq_ref
      writes the inputs and the reference results `tests/gptq_reference.rs` compares against.
  gptq_reference.py loop --model DIR [--nsamples 128 --seqlen 2048 --bits 4 --group-size 128
                    --damp 0.01 --device cuda --layers N --batch 1 --seed 0 --json OUT]
      the standard sequential GPTQ loop (IST-DASLab/gptq `llama.py` llama_sequential with
      true_sequential, `gptq.py` add_batch) over a HunYuan dense / Llama / Qwen2 safetensors
      checkpoint such as `hy-quant synth` writes, read lazily one layer at a time: seeded random
      token ids embedded with model.embed_tokens; per layer, per group [q,k,v] [o] [gate,up]
      [down]: forward every sample with float32 Hessians per linear, gptq() above on the device
      (symmetric, no act order), weight <- dequantization; then a last forward gives the next
      layer's inputs. Nothing is written but --json: phases (embed, read, forward_hessian,
      solve, error, propagate) per layer, each linear's output_rel_error (as hy-quant's
      manifest), and with --layers < all an extrapolation to the whole model, labelled as such.
      The speed baseline of issue 5 (scripts/bench_gptq_vs_reference.sh).
  gptq_reference.py logits --model DIR --tokens 1,17,912 [--expect tests/data/runner_reference_tiny.json]
      last-position logits of loop's layer forward in float64, to check that forward against
      the fixture the Rust runner is tested on.
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

BF16_MIN_POSITIVE = torch.tensor([1], dtype=torch.int16).view(torch.bfloat16).float().item()


def fit_range(w, sym):
    """The min/max range of each row of w [N, g]: it includes 0, is symmetric for symmetric
    grids, and an all-zero row gets [-1, 1] (IST-DASLab `quant.py` `find_params`)."""
    lo = torch.clamp(w.min(dim=1).values, max=0.0)
    hi = torch.clamp(w.max(dim=1).values, min=0.0)
    if sym:
        hi = torch.maximum(hi, -lo)
        lo = torch.where(lo < 0, -hi, lo)
    empty = (lo == 0) & (hi == 0)
    lo = torch.where(empty, torch.full_like(lo, -1.0), lo)
    hi = torch.where(empty, torch.full_like(hi, 1.0), hi)
    return lo, hi


def grid_of_range(lo, hi, bits, sym):
    """(scale [N], zero [N]) float32 of the ranges [lo, hi]."""
    maxq = float(2**bits - 1)
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


# The clip search (`--clip-search`): IST-DASLab `quant.py` `find_params` with mse=True,
# grid=100, maxshrink=0.8: the range shrunk by p = 1 - i/100 for i < 80, and per row the grid
# with the least sum |w - dq(w)|^norm kept (the first on ties). hy-quant uses norm 2.5 (the
# reference's default is 2.4; src/quant/grid.rs says why), so this does too.
CLIP_GRID, CLIP_STEPS, CLIP_NORM = 100, 80, 2.5


def clip_error(w, scale, zero, maxq):
    _, dq = quantize(w, scale.unsqueeze(1), zero.unsqueeze(1), maxq)
    return ((w - dq).abs().double() ** CLIP_NORM).sum(dim=1)


def fit_grid(w, bits, sym, clip=False):
    """w: [N, g] float32 -> (scale [N], zero [N]) float32; min/max, or the clip search."""
    lo, hi = fit_range(w, sym)
    scale, zero = grid_of_range(lo, hi, bits, sym)
    if not clip:
        return scale, zero
    maxq = float(2**bits - 1)
    best = clip_error(w, scale, zero, maxq)
    for i in range(1, CLIP_STEPS):
        # p in float32, as the Rust side computes it (1 - i/100 rounded twice)
        p = float(np.float32(1.0) - np.float32(i) / np.float32(CLIP_GRID))
        sc, z = grid_of_range(p * lo, p * hi, bits, sym)
        err = clip_error(w, sc, z, maxq)
        better = err < best
        best = torch.where(better, err, best)
        scale = torch.where(better, sc, scale)
        zero = torch.where(better, z, zero)
    return scale, zero


def quantize(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return q, scale * (q - zero)


def hessian(x):
    x = x.double()
    return 2.0 / x.shape[0] * (x.t() @ x)


def gptq(w, H, bits, group_size, sym, act_order="none", damp=0.01, block_size=128, clip=False):
    """w: [N,K] float32, H: [K,K] float64, both on one device (CPU or GPU; the work stays
    there). Returns dict of results in original column order, on that device."""
    N, K = w.shape
    dev = w.device
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
        static_params = [fit_grid(W[:, g * glen:(g + 1) * glen], bits, sym, clip) for g in range(G)]

    perm = torch.arange(K, device=dev)
    if act_order != "none":
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W = W[:, perm]
        H = H[perm][:, perm]

    mean_diag = torch.mean(torch.diag(H)).item()
    d = damp
    retries = 0
    while True:
        Hd = H + d * mean_diag * torch.eye(K, dtype=H.dtype, device=dev)
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

    Q = torch.zeros(N, K, device=dev)  # levels, sweep order
    Wq = torch.zeros(N, K, device=dev)  # dequantized, sweep order
    perm_list = perm.tolist()  # one transfer, not K
    col_group = [(i // glen) if not up_front else (perm_list[i] // glen) for i in range(K)]
    scales = torch.zeros(G, N, device=dev)
    zeros = torch.zeros(G, N, device=dev)
    if up_front:
        for g, (sc, z) in enumerate(static_params):
            scales[g], zeros[g] = sc, z
    losses = torch.zeros(N, K, dtype=torch.float64, device=dev)

    for i1 in range(0, K, block_size):
        i2 = min(i1 + block_size, K)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros(N, i2 - i1, device=dev)
        for i in range(i2 - i1):
            j = i1 + i
            if not up_front and j % glen == 0:
                # fitted on W (block-start values), not on W1
                scales[j // glen], zeros[j // glen] = fit_grid(W[:, j:j + glen], bits, sym, clip)
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
    g_idx = torch.tensor(col_group, dtype=torch.int32, device=dev)
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
    r = gptq(w, H, args.bits, args.group_size, not args.asym, args.act_order, args.damp, args.block_size,
             args.clip_search)
    err = output_error(w, r["wq"], H)
    meta = {"output_error": repr(err), "loss": repr(r["loss"]), "damp_used": repr(r["damp_used"])}
    save_file({k: r[k] for k in ["q", "wq", "scales", "zeros", "g_idx"]}, args.out, metadata=meta)
    print(json.dumps({"output_error": err, "loss": r["loss"], "damp_used": r["damp_used"]}))


CONFIGS = [
    # (name, bits, group_size, sym, act_order, clip search)
    ("int4_g128_sym_none", 4, 128, True, "none", False),
    ("int4_g32_asym_none", 4, 32, False, "none", False),
    ("int4_g64_sym_permute", 4, 64, True, "permute", False),
    ("int4_g32_asym_permute", 4, 32, False, "permute", False),
    ("int4_g64_asym_static", 4, 64, False, "static", False),
    ("int4_gm1_sym_none", 4, -1, True, "none", False),
    ("int8_g128_sym_none", 8, 128, True, "none", False),
    ("int8_gm1_asym_permute", 8, -1, False, "permute", False),
    # hy-quant's defaults (static groups + clip search), and the clip search with dynamic
    # groups (fitted at block start), asymmetric, and per channel
    ("int4_g128_sym_static_clip", 4, 128, True, "static", True),
    ("int4_g32_sym_static_clip", 4, 32, True, "static", True),
    ("int4_g32_asym_none_clip", 4, 32, False, "none", True),
    ("int4_gm1_sym_none_clip", 4, -1, True, "none", True),
    ("int8_g128_sym_static_clip", 8, 128, True, "static", True),
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
    for name, bits, gs, sym, ao, clip in CONFIGS:
        r = gptq(w.float(), H, bits, gs, sym, ao, clip=clip)
        err = output_error(w.float(), r["wq"], H)
        for k in ["q", "scales", "zeros", "g_idx"]:
            tensors[f"{name}.{k}"] = r[k]
        meta.append({"name": name, "bits": bits, "group_size": gs, "sym": sym, "act_order": ao,
                     "clip_search": clip, "damp": 0.01, "block_size": 128, "output_error": err,
                     "loss": r["loss"],
                     "damp_used": r["damp_used"]})
        print(f"{name}: output_error {err:.6g} loss {r['loss']:.6g}")
    save_file(tensors, os.path.join(out, "outputs.safetensors"))
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({"generator": "scripts/gptq_reference.py make-test-data", "torch": torch.__version__,
                   "configs": meta}, f, indent=1)


# ---------------------------------------------------------------------------------------------
# `loop`: the standard sequential GPTQ layer loop, as IST-DASLab/gptq structures it in
# `llama.py` (`llama_sequential`: capture the first layer's inputs, then per layer: hooks on the
# linears, forward every sample, `fasterquant` each linear, forward again for the next layer's
# inputs; `true_sequential` groups) and `gptq.py` (`add_batch`: one float32 Hessian per linear,
# H *= n/(n+b); n += b; H += (2/n) X^T X with n counted in samples). Written from those
# descriptions, not copied; the per-linear solver is `gptq()` above, run on the device.
# The decoder layer follows transformers' hunyuan_v1_dense / qwen2 / llama modeling files (the
# same facts as scripts/runner_reference.py and src/model/arch.rs).
# ---------------------------------------------------------------------------------------------

# llama.py's true-sequential order: each group sees the earlier groups' quantized weights.
SEQUENTIAL_GROUPS = [
    ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    ["self_attn.o_proj"],
    ["mlp.gate_proj", "mlp.up_proj"],
    ["mlp.down_proj"],
]
LINEARS = [name for group in SEQUENTIAL_GROUPS for name in group]


class Checkpoint:
    """Lazy tensor access to an HF safetensors directory (model.safetensors, or shards listed
    in model.safetensors.index.json): each get() reads one tensor, nothing else is loaded."""

    def __init__(self, model_dir):
        self.dir = model_dir
        with open(os.path.join(model_dir, "config.json")) as f:
            self.config = json.load(f)
        index = os.path.join(model_dir, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                self.file_of = json.load(f)["weight_map"]
        else:
            single = "model.safetensors"
            with safe_open(os.path.join(model_dir, single), framework="pt") as f:
                self.file_of = {name: single for name in f.keys()}

    def has(self, name):
        return name in self.file_of

    def get(self, name, device):
        with safe_open(os.path.join(self.dir, self.file_of[name]), framework="pt") as f:
            return f.get_tensor(name).to(device)


class DecoderShape:
    """What the layer forward needs from config.json (keys as `hy-quant synth` writes them,
    defaults as src/model/config.rs reads them)."""

    def __init__(self, cfg):
        self.model_type = cfg["model_type"]
        hunyuan = self.model_type == "hunyuan_v1_dense"
        self.hidden = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.kv_heads = cfg.get("num_key_value_heads") or self.heads
        self.head_dim = cfg.get("head_dim") or cfg.get("attention_head_dim") or self.hidden // self.heads
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        self.layers = cfg["num_hidden_layers"]
        self.vocab = cfg["vocab_size"]
        self.qk_norm = hunyuan and cfg.get("use_qk_norm", True)
        self.rope_base = rope_base(cfg, self.head_dim)


def rope_base(cfg, head_dim):
    """HunYuan's dynamic-alpha scaling: base = theta * alpha^(d/(d-2)) at every position
    (transformers `HunYuanDenseV1RotaryEmbedding`, src/model/arch.rs `rope_base`)."""
    theta = cfg.get("rope_theta", 10000.0)
    rs = cfg.get("rope_scaling") or {}
    if (cfg["model_type"] == "hunyuan_v1_dense" and (rs.get("type") or rs.get("rope_type")) == "dynamic"
            and rs.get("alpha")):
        return theta * rs["alpha"] ** (head_dim / (head_dim - 2))
    return theta


def rope_tables(shape, seqlen, device, dtype):
    """cos, sin [seqlen, head_dim] for the NeoX rotate-half layout, computed in float32."""
    hd = shape.head_dim
    inv_freq = 1.0 / shape.rope_base ** (torch.arange(0, hd, 2, dtype=torch.float64, device=device) / hd)
    inv_freq = inv_freq.float()
    ang = torch.arange(seqlen, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rms_norm(x, w, eps):
    """RMSNorm in float32, result back in x's dtype, then scaled (transformers' order)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def layer_forward(x, p, shape, cos, sin, on_input=None):
    """One decoder layer on x [B, T, hidden]. p: short tensor name -> tensor (`self_attn.q_proj`
    weight under "self_attn.q_proj", biases under "...bias", norms under their own names).
    on_input(linear_name, X) sees every linear's input, as gptq.py's forward hooks do."""
    def linear(inp, name):
        if on_input is not None:
            on_input(name, inp)
        return torch.nn.functional.linear(inp, p[name], p.get(name + ".bias"))

    B, T, _ = x.shape
    nh, nkv, hd = shape.heads, shape.kv_heads, shape.head_dim
    h = rms_norm(x, p["input_layernorm.weight"], shape.eps)
    q = linear(h, "self_attn.q_proj").view(B, T, nh, hd).transpose(1, 2)
    k = linear(h, "self_attn.k_proj").view(B, T, nkv, hd).transpose(1, 2)
    v = linear(h, "self_attn.v_proj").view(B, T, nkv, hd).transpose(1, 2)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    if shape.qk_norm:  # HunYuan: after RoPE
        q = rms_norm(q, p["self_attn.query_layernorm.weight"], shape.eps)
        k = rms_norm(k, p["self_attn.key_layernorm.weight"], shape.eps)
    if nkv != nh:  # repeat_kv: query head i reads kv head i // (nh / nkv)
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.repeat_interleave(nh // nkv, dim=1)
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + linear(o.transpose(1, 2).reshape(B, T, nh * hd), "self_attn.o_proj")
    h = rms_norm(x, p["post_attention_layernorm.weight"], shape.eps)
    m = torch.nn.functional.silu(linear(h, "mlp.gate_proj")) * linear(h, "mlp.up_proj")
    return x + linear(m, "mlp.down_proj")


def load_layer(ckpt, layer, device, dtype=None):
    """Layer `layer`'s tensors on `device` (checkpoint dtype unless `dtype`), by the short names
    layer_forward() reads: a linear's weight under its module name, its bias under
    "<module>.bias", norms under "<norm>.weight". Absent biases / QK-norms are left out."""
    prefix = f"model.layers.{layer}."
    wanted = {n: n + ".weight" for n in LINEARS}
    wanted.update({n + ".bias": n + ".bias" for n in LINEARS})
    for norm in ["input_layernorm", "post_attention_layernorm",
                 "self_attn.query_layernorm", "self_attn.key_layernorm"]:
        wanted[norm + ".weight"] = norm + ".weight"
    p = {}
    for short, stored in wanted.items():
        if ckpt.has(prefix + stored):
            t = ckpt.get(prefix + stored, device)
            p[short] = t if dtype is None else t.to(dtype)
    return p


class Hessian:
    """gptq.py `add_batch`: float32 H = (2/n) sum X^T X, n counted in samples (batch rows)."""

    def __init__(self, k, device):
        self.H = torch.zeros(k, k, dtype=torch.float32, device=device)
        self.n = 0

    def add_batch(self, x):
        b = x.shape[0]
        x = x.reshape(-1, x.shape[-1])
        self.H *= self.n / (self.n + b)
        self.n += b
        x = math.sqrt(2.0 / self.n) * x.float()
        self.H += x.t() @ x


def relative_output_error(w, wq, H):
    """sqrt(tr(D H D^T) / tr(W H W^T)) = ||XW^T - XQ^T|| / ||XW^T|| over the calibration rows,
    as hy-quant's manifest `output_rel_error` (float32, without forming N x N products)."""
    d = w - wq
    num = ((d @ H) * d).sum().double()
    den = ((w @ H) * w).sum().double()
    return math.sqrt(num.item() / den.item()) if den.item() > 0 else float("nan")


class PhaseClock:
    """Wall time per phase, with a device synchronize at every boundary so GPU work is
    charged to the phase that queued it."""

    def __init__(self, device):
        self.device = device
        self.seconds = {}

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self):
        self.sync()
        self.t = time.perf_counter()

    def stop(self, phase):
        self.sync()
        dt = time.perf_counter() - self.t
        self.seconds[phase] = self.seconds.get(phase, 0.0) + dt
        return dt


def forward_all(inps, outs, p, shape, cos, sin, batch, on_input=None):
    """Every calibration sample through one layer, `batch` samples at a time (llama.py: 1)."""
    for i in range(0, inps.shape[0], batch):
        y = layer_forward(inps[i:i + batch], p, shape, cos, sin, on_input)
        if outs is not None:
            outs[i:i + batch] = y


def quantize_layer(p, inps, shape, cos, sin, args, clock):
    """llama.py's per-layer body with true_sequential: per group, Hessians from a forward of
    all samples (earlier groups already quantized), then GPTQ on each linear of the group and
    its weight replaced by the dequantization. Returns per-linear stats."""
    stats = {}
    for group in SEQUENTIAL_GROUPS:
        clock.start()
        hs = {name: Hessian(p[name].shape[1], inps.device) for name in group}

        def hook(name, x):
            if name in hs:
                hs[name].add_batch(x)

        with torch.no_grad():
            forward_all(inps, None, p, shape, cos, sin, args.batch, hook)
        clock.stop("forward_hessian")
        for name in group:
            clock.start()
            w = p[name].float()
            r = gptq(w, hs[name].H.double(), args.bits, args.group_size, True, "none",
                     args.damp, args.block_size)
            clock.stop("solve")
            clock.start()
            err = relative_output_error(w, r["wq"], hs[name].H)
            clock.stop("error")
            stats[name] = {"output_rel_error": err, "damp_used": r["damp_used"]}
            p[name] = r["wq"].to(p[name].dtype)
            del r, w
        hs.clear()  # free the Hessians before the next group allocates its own
    return stats


def embed_calibration(ckpt, shape, args, device, dtype):
    """Seeded random token ids [nsamples, seqlen] looked up in model.embed_tokens.weight (the
    text does not matter for timing); the embedding is freed afterwards."""
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, shape.vocab, (args.nsamples, args.seqlen), generator=g)
    emb = ckpt.get("model.embed_tokens.weight", device)
    if dtype is not None:
        emb = emb.to(dtype)
    x = emb[ids.to(device)]
    del emb
    return x


def run_loop(args):
    t_start = time.perf_counter()
    device = torch.device(args.device)
    # gptq.py turns TF32 off: the Hessians and the sweep are true float32.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ckpt = Checkpoint(args.model)
    shape = DecoderShape(ckpt.config)
    dtype = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    n_layers = shape.layers if args.layers is None else min(args.layers, shape.layers)
    clock = PhaseClock(device)

    clock.start()
    inps = embed_calibration(ckpt, shape, args, device, dtype)
    embed_s = clock.stop("embed")
    outs = torch.empty_like(inps)
    cos, sin = rope_tables(shape, args.seqlen, device, inps.dtype)
    print(f"loop: {args.model} ({shape.model_type}, {shape.layers} layers, hidden {shape.hidden}), "
          f"{args.nsamples} x {args.seqlen} tokens, {inps.dtype}, {device}; embed {embed_s:.2f} s", flush=True)

    per_layer = []
    for layer in range(n_layers):
        before = dict(clock.seconds)
        clock.start()
        p = load_layer(ckpt, layer, device, dtype)
        clock.stop("read")
        stats = quantize_layer(p, inps, shape, cos, sin, args, clock)
        clock.start()
        with torch.no_grad():
            forward_all(inps, outs, p, shape, cos, sin, args.batch)
        clock.stop("propagate")
        finite = bool(torch.isfinite(outs).all().item())
        if not finite:
            raise RuntimeError(f"layer {layer}: non-finite output")
        inps, outs = outs, inps
        del p
        phases = {k: v - before.get(k, 0.0) for k, v in clock.seconds.items() if v - before.get(k, 0.0) > 0}
        total = sum(phases.values())
        per_layer.append({"layer": layer, "seconds": total, "phases": phases, "linears": stats})
        errs = " ".join(f"{n.split('.')[-1]}={s['output_rel_error']:.4f}" for n, s in stats.items())
        print(f"layer {layer}: {total:.2f} s (" + ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
              + f"); rel err {errs}", flush=True)

    layer_s = [l["seconds"] for l in per_layer]
    measured = embed_s + sum(layer_s)
    mean = sum(layer_s) / len(layer_s)
    result = {
        "tool": "scripts/gptq_reference.py loop (PyTorch, IST-DASLab/gptq llama.py structure)",
        "model": args.model, "model_type": shape.model_type, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "dtype": str(inps.dtype),
        "nsamples": args.nsamples, "seqlen": args.seqlen, "bits": args.bits,
        "group_size": args.group_size, "damp": args.damp, "batch": args.batch,
        "num_layers": shape.layers, "layers_done": n_layers,
        "embed_seconds": embed_s, "seconds_per_layer": mean, "per_layer_seconds": layer_s,
        "measured_seconds": measured, "process_seconds": time.perf_counter() - t_start,
        "phase_seconds": clock.seconds, "per_layer": per_layer,
        "mean_output_rel_error": sum(s["output_rel_error"] for l in per_layer for s in l["linears"].values())
        / (len(LINEARS) * n_layers),
    }
    if n_layers < shape.layers:
        # The first layer pays the CUDA/cuBLAS/cuSOLVER start-up once; the rest are steady.
        steady = sum(layer_s[1:]) / (n_layers - 1) if n_layers > 1 else mean
        result["extrapolated"] = {
            "whole_model_seconds": embed_s + layer_s[0] + (shape.layers - 1) * steady,
            "formula": "embed + first layer + (num_layers - 1) * mean(later layers)",
            "simple_seconds": embed_s + shape.layers * mean,
            "simple_formula": "embed + num_layers * mean(all measured layers)",
        }
        whole = f"EXTRAPOLATED whole model ({shape.layers} layers): {result['extrapolated']['whole_model_seconds']:.1f} s"
    else:
        whole = f"whole model measured: {measured:.1f} s"
    print(f"reference loop: {n_layers}/{shape.layers} layers in {measured:.1f} s "
          f"({mean:.2f} s/layer, embed {embed_s:.2f} s); {whole}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


def run_logits(args):
    """Last-position logits of the float64 layer forward above (unquantized), for checking it
    against tests/data/runner_reference_tiny.json (the fixture the Rust runner is tested on)."""
    ckpt = Checkpoint(args.model)
    shape = DecoderShape(ckpt.config)
    dev, dt = torch.device("cpu"), torch.float64
    tokens = [int(t) for t in args.tokens.split(",")]
    x = ckpt.get("model.embed_tokens.weight", dev).to(dt)[torch.tensor(tokens)][None]
    cos, sin = rope_tables(shape, len(tokens), dev, dt)
    for layer in range(shape.layers):
        x = layer_forward(x, load_layer(ckpt, layer, dev, dt), shape, cos, sin)
    x = rms_norm(x, ckpt.get("model.norm.weight", dev).to(dt), shape.eps)
    head = "lm_head.weight" if ckpt.has("lm_head.weight") else "model.embed_tokens.weight"
    logits = x[0, -1] @ ckpt.get(head, dev).to(dt).t()
    print(f"argmax {int(logits.argmax())}, first logits {logits[:5].tolist()}")
    if args.expect:
        with open(args.expect) as f:
            ref = torch.tensor(json.load(f)["cases"][0]["logits"], dtype=dt)
        diff = (logits - ref).abs().max().item()
        print(f"max |logits - {args.expect}| = {diff:.3g} (max |logit| {ref.abs().max().item():.3g})")
        if diff > 1e-3 * max(1.0, ref.abs().max().item()):
            raise SystemExit("logits differ")


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
    q.add_argument("--clip-search", action="store_true",
                   help="fit each group by the shrink search (hy-quant --clip-search)")
    q.add_argument("--damp", type=float, default=0.01)
    q.add_argument("--block-size", type=int, default=128)
    q.add_argument("--out", required=True)
    m = sub.add_parser("make-test-data")
    m.add_argument("--out", default="tests/data/gptq_ref")
    lp = sub.add_parser("loop", help="sequential GPTQ over a checkpoint's layers, timed")
    lp.add_argument("--model", required=True)
    lp.add_argument("--nsamples", type=int, default=128)
    lp.add_argument("--seqlen", type=int, default=2048)
    lp.add_argument("--bits", type=int, default=4)
    lp.add_argument("--group-size", type=int, default=128)
    lp.add_argument("--damp", type=float, default=0.01)
    lp.add_argument("--block-size", type=int, default=128)
    lp.add_argument("--device", default="cuda")
    lp.add_argument("--layers", type=int, help="only the first N layers (default: all)")
    lp.add_argument("--batch", type=int, default=1, help="samples per forward (llama.py: 1)")
    lp.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                    help="compute dtype; auto = the checkpoint's")
    lp.add_argument("--seed", type=int, default=0)
    lp.add_argument("--json")
    lg = sub.add_parser("logits", help="last-position logits of loop's layer forward (float64)")
    lg.add_argument("--model", required=True)
    lg.add_argument("--tokens", required=True)
    lg.add_argument("--expect")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.cmd == "quantize":
        if not args.inputs and not (args.weight and args.x):
            p.error("quantize needs --inputs, or --weight and --x")
        run_quantize(args)
    elif args.cmd == "make-test-data":
        make_test_data(args.out)
    elif args.cmd == "loop":
        run_loop(args)
    else:
        run_logits(args)


if __name__ == "__main__":
    main()
