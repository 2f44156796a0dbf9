#!/usr/bin/env python3
"""Independent numpy (float64) forward pass for the runner's numerical reference.

Reads a checkpoint directory written by `hy-quant synth` / `hy-quant quantize` (or any HF
qwen2 / llama / hunyuan_v1_dense safetensors dir), runs the whole token sequence with a full
causal mask (no KV cache) and prints / writes the logits of the last position.

Nothing here is shared with the Rust code: safetensors is parsed by hand (bf16 = high half of
an f32), GPTQ v1 is unpacked from the format description in ../shared/formats.md, and the
order of operations follows transformers' modeling files (qwen2, llama, hunyuan_v1_dense:
QK-norm after RoPE, dynamic-alpha RoPE base).

Usage:
  python3 scripts/runner_reference.py --model DIR --tokens 1,5,9 [--json-out FILE --name NAME]
  python3 scripts/runner_reference.py --regenerate-test-data   # rebuilds tests/data/runner_reference_tiny.json
"""
import argparse
import glob
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_DATA = os.path.join(ROOT, "tests", "data", "runner_reference_tiny.json")
# The token sequence the Rust test runs too; touches ids across the whole tiny vocab (1024).
TEST_TOKENS = [1, 17, 912, 5, 333, 1023, 0, 48, 700, 2, 64, 511]


def load_safetensors(path):
    out = {}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        raw = data[b:e]
        dt = info["dtype"]
        shape = info["shape"]
        if dt == "BF16":
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32)
        elif dt == "F16":
            arr = np.frombuffer(raw, dtype="<f2")
        elif dt == "F32":
            arr = np.frombuffer(raw, dtype="<f4")
        elif dt == "I32":
            arr = np.frombuffer(raw, dtype="<i4")
        else:
            raise SystemExit(f"{path}: tensor {name}: dtype {dt} not handled")
        out[name] = arr.reshape(shape)
    return out


def load_dir(d):
    tensors = {}
    for p in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        tensors.update(load_safetensors(p))
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    return cfg, tensors


def gptq_dequant(t, prefix, qc):
    """w[n, k] = scale[g_idx[k], n] * (q[n, k] - (qzero[g, n] + 1)), HF layout [N, K]."""
    bits = qc["bits"]
    pf = 32 // bits
    mask = (1 << bits) - 1
    qweight = t[prefix + ".qweight"].astype(np.int64) & 0xFFFFFFFF  # [K/pf, N]
    qzeros = t[prefix + ".qzeros"].astype(np.int64) & 0xFFFFFFFF  # [G, N/pf]
    scales = t[prefix + ".scales"].astype(np.float64)  # [G, N]
    kp, n = qweight.shape
    k = kp * pf
    q = np.zeros((k, n), dtype=np.int64)
    for j in range(pf):
        q[j::pf, :] = (qweight >> (bits * j)) & mask
    g = qzeros.shape[0]
    z = np.zeros((g, n), dtype=np.int64)
    for j in range(pf):
        z[:, j::pf] = (qzeros >> (bits * j)) & mask
    z = z + 1
    if prefix + ".g_idx" in t:
        g_idx = t[prefix + ".g_idx"].astype(np.int64)
    else:
        g_idx = np.arange(k) // qc["group_size"]
    w_kn = scales[g_idx, :] * (q - z[g_idx, :])  # [K, N]
    return w_kn.T


def weight(t, prefix, qc):
    if prefix + ".weight" in t:
        return t[prefix + ".weight"].astype(np.float64)
    return gptq_dequant(t, prefix, qc)


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def forward_last_logits(cfg, t, tokens):
    mt = cfg["model_type"]
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim") or H // nh
    eps = cfg.get("rms_norm_eps", 1e-6)
    theta = cfg.get("rope_theta", 10000.0)
    rs = cfg.get("rope_scaling") or {}
    if mt == "hunyuan_v1_dense" and (rs.get("type") or rs.get("rope_type")) == "dynamic" and rs.get("alpha"):
        base = theta * rs["alpha"] ** (hd / (hd - 2))
    else:
        base = theta
    qc = cfg.get("quantization_config")
    qk_norm = mt == "hunyuan_v1_dense" and cfg.get("use_qk_norm", True)
    qkv_bias = mt == "qwen2" or cfg.get("attention_bias", False)

    T = len(tokens)
    x = t["model.embed_tokens.weight"].astype(np.float64)[np.array(tokens)]
    inv = 1.0 / base ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    emb = np.concatenate([ang, ang], axis=-1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]  # [T, 1, hd]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}"
        a = rms(x, t[p + ".input_layernorm.weight"].astype(np.float64), eps)

        def proj(name, has_bias):
            y = a @ weight(t, f"{p}.self_attn.{name}", qc).T
            if has_bias:
                y = y + t[f"{p}.self_attn.{name}.bias"].astype(np.float64)
            return y

        q = proj("q_proj", qkv_bias).reshape(T, nh, hd)
        k = proj("k_proj", qkv_bias).reshape(T, nkv, hd)
        v = proj("v_proj", qkv_bias).reshape(T, nkv, hd)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if qk_norm:
            q = rms(q, t[p + ".self_attn.query_layernorm.weight"].astype(np.float64), eps)
            k = rms(k, t[p + ".self_attn.key_layernorm.weight"].astype(np.float64), eps)
        rep = nh // nkv
        k = np.repeat(k, rep, axis=1)  # repeat_kv: head h reads kv head h // rep
        v = np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask[None]
        s = s - s.max(-1, keepdims=True)
        pr = np.exp(s)
        pr = pr / pr.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", pr, v).reshape(T, nh * hd)
        ob = o @ weight(t, f"{p}.self_attn.o_proj", qc).T
        if cfg.get("attention_bias", False):
            ob = ob + t[f"{p}.self_attn.o_proj.bias"].astype(np.float64)
        x = x + ob
        m = rms(x, t[p + ".post_attention_layernorm.weight"].astype(np.float64), eps)
        g = m @ weight(t, f"{p}.mlp.gate_proj", qc).T
        u = m @ weight(t, f"{p}.mlp.up_proj", qc).T
        x = x + ((g / (1 + np.exp(-g))) * u) @ weight(t, f"{p}.mlp.down_proj", qc).T
    x = rms(x, t["model.norm.weight"].astype(np.float64), eps)
    if "lm_head.weight" in t or "lm_head.qweight" in t:
        head = weight(t, "lm_head", qc)
    else:
        head = t["model.embed_tokens.weight"].astype(np.float64)
    return (x[-1] @ head.T)


def regenerate():
    """Builds the tiny fixtures with the hy-quant binary and writes tests/data/runner_reference_tiny.json."""
    cases = [
        {"name": "bf16", "quantize": None},
        {"name": "gptq-int4-g64", "quantize": {"bits": 4, "group_size": 64, "method": "rtn"}},
        {"name": "gptq-int8-g32", "quantize": {"bits": 8, "group_size": 32, "method": "rtn"}},
    ]
    out = {"preset": "tiny", "seed": 0, "dtype": "bf16", "tokens": TEST_TOKENS, "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        run = ["cargo", "run", "-q", "--"]
        fp = os.path.join(tmp, "tiny")
        subprocess.run(run + ["synth", "--preset", "tiny", "--out", fp], check=True, cwd=ROOT)
        for c in cases:
            d = fp
            if c["quantize"]:
                q = c["quantize"]
                d = os.path.join(tmp, c["name"])
                subprocess.run(
                    run + ["quantize", "--model", fp, "--out", d, "--bits", str(q["bits"]),
                           "--group-size", str(q["group_size"]), "--method", q["method"]],
                    check=True, cwd=ROOT)
            cfg, t = load_dir(d)
            logits = forward_last_logits(cfg, t, TEST_TOKENS)
            out["cases"].append({**c, "logits": [float(f"{v:.9g}") for v in logits]})
            print(f"{c['name']}: argmax {int(np.argmax(logits))}, max |logit| {np.abs(logits).max():.4f}")
    os.makedirs(os.path.dirname(TEST_DATA), exist_ok=True)
    with open(TEST_DATA, "w") as f:
        json.dump(out, f)
        f.write("\n")
    print("wrote", TEST_DATA)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--tokens", help="comma-separated token ids")
    ap.add_argument("--json-out")
    ap.add_argument("--regenerate-test-data", action="store_true")
    a = ap.parse_args()
    if a.regenerate_test_data:
        regenerate()
        return
    if not a.model or not a.tokens:
        ap.error("--model and --tokens are required (or --regenerate-test-data)")
    cfg, t = load_dir(a.model)
    toks = [int(x) for x in a.tokens.split(",")]
    logits = forward_last_logits(cfg, t, toks)
    print(f"argmax {int(np.argmax(logits))}, first logits {logits[:5]}")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"tokens": toks, "logits": logits.tolist()}, f)


if __name__ == "__main__":
    sys.exit(main())
