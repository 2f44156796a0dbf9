#!/usr/bin/env python3
"""Checks hy-quant's GPTQ v1 output with an independent implementation (GPU machine).

Peer: AutoGPTQ 0.7.1's `auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py` QuantLinear, the
reference v1 layout (its pure-PyTorch path, used when the CUDA extension is absent). The module
file is loaded straight from the released wheel (.whl/auto_gptq-0.7.1-*.whl), so the unpacking,
zero+1 handling and scale application are AutoGPTQ's, not ours.

1. For every quantized linear: the weight AutoGPTQ reconstructs (QuantLinear.forward on an
   identity matrix) must equal, bit for bit, the weight `hy-quant dequantize` wrote.
2. Logits through transformers: the original model; the same model with every linear replaced
   by AutoGPTQ's QuantLinear holding our packed tensors; and our dequantized checkpoint loaded
   as a plain model. Reports max abs / relative error and top-1 agreement.

usage: check_gptq_with_peer.py --original DIR --quantized DIR --dequantized DIR [--label NAME]
       [--max-rel-logit-err 0.1] [--min-top1 0.8]
Exit status 1 if a weight differs or the quantized logits drift more than allowed (the
defaults suit 8-bit; pass looser bounds for 4-bit).
"""
import argparse
import glob
import importlib.util
import json
import os
import sys
import tempfile
import zipfile

import torch
from safetensors.torch import load_file


def load_autogptq_quantlinear():
    wheels = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", ".whl", "auto_gptq-0.7.1-*.whl")))
    if not wheels:
        sys.exit("auto_gptq-0.7.1 wheel not found under .whl/ (see docs/formats.md for how to fetch it)")
    dest = tempfile.mkdtemp(prefix="autogptq-")
    with zipfile.ZipFile(wheels[0]) as z:
        z.extract("auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py", dest)
    path = os.path.join(dest, "auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py")
    spec = importlib.util.spec_from_file_location("autogptq_qlinear_cuda_old", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.QuantLinear


def load_dir(d):
    tensors = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        tensors.update(load_file(f))
    return tensors


def peer_linear(QuantLinear, qc, q, prefix, device, compute_dtype=None):
    qweight, qzeros, scales, g_idx = (q[f"{prefix}.{s}"] for s in ("qweight", "qzeros", "scales", "g_idx"))
    bits = qc["bits"]
    k = qweight.shape[0] * 32 // bits
    n = qweight.shape[1]
    gs = qc["group_size"] if qc["group_size"] != -1 else k
    assert torch.equal(g_idx, torch.arange(k, dtype=torch.int32) // gs), f"{prefix}: g_idx is not trivial"
    bias = q.get(f"{prefix}.bias")
    dtype = compute_dtype or scales.dtype
    lin = QuantLinear(bits, gs, k, n, bias=bias is not None, weight_dtype=dtype)
    if bias is not None:
        lin.bias = bias.to(dtype)
    lin.qweight.copy_(qweight)
    lin.qzeros.copy_(qzeros)
    lin.scales = scales.to(dtype)
    lin.g_idx.copy_(g_idx)
    return lin.to(device)


def peer_weight(lin, device):
    """The [N, K] weight AutoGPTQ's forward multiplies by: its pure-PyTorch path ends in
    `torch.matmul(x, weight)`; a spy on torch.matmul captures `weight` during one forward."""
    captured = {}
    real = torch.matmul

    def spy(a, b, *rest, **kw):
        captured["w"] = b
        return real(a, b, *rest, **kw)

    torch.matmul = spy
    try:
        with torch.no_grad():
            lin(torch.zeros(1, lin.infeatures, dtype=lin.scales.dtype, device=device))
    finally:
        torch.matmul = real
    return captured["w"].T.contiguous().cpu()


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def compare(a, b):
    diff = (a - b).abs()
    rel = (diff.norm() / b.norm()).item()
    top1 = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    return diff.max().item(), rel, top1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--original", required=True)
    ap.add_argument("--quantized", required=True)
    ap.add_argument("--dequantized", required=True)
    ap.add_argument("--label", default="")
    ap.add_argument("--max-rel-logit-err", type=float, default=0.1)
    ap.add_argument("--min-top1", type=float, default=0.8)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    QuantLinear = load_autogptq_quantlinear()
    qc = json.load(open(os.path.join(args.quantized, "config.json")))["quantization_config"]
    q = load_dir(args.quantized)
    deq = load_dir(args.dequantized)
    prefixes = sorted(k[: -len(".qweight")] for k in q if k.endswith(".qweight"))
    mismatched = 0
    for p in prefixes:
        lin = peer_linear(QuantLinear, qc, q, p, device)
        w_peer = peer_weight(lin, device)
        w_ours = deq[f"{p}.weight"]
        if not torch.equal(w_peer, w_ours):
            mismatched += 1
            d = (w_peer.float() - w_ours.float()).abs()
            print(f"MISMATCH {p}: {int((d > 0).sum())} elements differ, max {d.max().item():.3e}")
    print(f"[{args.label}] weights: {len(prefixes) - mismatched}/{len(prefixes)} linears bit-identical to AutoGPTQ's dequantization")

    from transformers import AutoModelForCausalLM

    cfg = json.load(open(os.path.join(args.original, "config.json")))
    # Logits in float32 throughout (bf16/f16 weights and scales are exact in f32), so the
    # comparison measures the weights, not bf16 rounding of activations.
    dtype = torch.float32
    orig = AutoModelForCausalLM.from_pretrained(args.original, dtype=dtype).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg["vocab_size"], (4, 48), generator=gen).to(device)
    tok_file = os.path.join(args.original, "tokenizer.json")
    if os.path.exists(tok_file):
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast(tokenizer_file=tok_file)
        texts = ["Translate into Chinese: save the output of a command in a log file",
                 "他偏爱红色。 Translate into English.",
                 "The quick brown fox jumps over the lazy dog, and the network configuration is done.",
                 "现在还很早，不晚。"]
        enc = [tok(t)["input_ids"][:32] for t in texts]
        m = min(len(e) for e in enc)
        ids = torch.tensor([e[:m] for e in enc], device=device)
    l_orig = logits_of(orig, ids)
    for p in prefixes:
        parent_name, child = p.rsplit(".", 1)
        parent = orig.get_submodule(parent_name)
        setattr(parent, child, peer_linear(QuantLinear, qc, q, p, device, compute_dtype=dtype))
    l_peer = logits_of(orig, ids)
    del orig
    deq_model = AutoModelForCausalLM.from_pretrained(args.dequantized, dtype=dtype).to(device).eval()
    l_deq = logits_of(deq_model, ids)
    rows = [("AutoGPTQ-linears vs original", *compare(l_peer, l_orig)),
            ("hy-quant dequantized vs original", *compare(l_deq, l_orig)),
            ("AutoGPTQ-linears vs hy-quant dequantized", *compare(l_peer, l_deq))]
    print(f"[{args.label}] logits over {ids.numel()} positions ({qc['bits']}-bit g{qc['group_size']} sym={qc['sym']})")
    print(f"{'comparison':45s} {'max_abs':>10s} {'rel_fro':>10s} {'top1_agree':>10s}")
    for name, mx, rel, top1 in rows:
        print(f"{name:45s} {mx:10.4g} {rel:10.4g} {top1:10.4f}")
    bad = mismatched > 0 or rows[0][2] > args.max_rel_logit_err or rows[0][3] < args.min_top1
    print(f"[{args.label}] RESULT: {'FAIL' if bad else 'PASS'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
