#!/usr/bin/env python3
"""Compares `hy-quant convert` output with transformers' own GGUF loader (needs torch).

transformers dequantizes the GGUF (through gguf-py), renames tensors and builds a tokenizer
from the GGUF metadata; we check, for every tensor, that our bf16/f16 safetensors equal
transformers' float32 weights rounded to the same dtype (bit for bit), and that both
tokenizers give the same ids on every line of the test sets.

usage: check_gguf_with_transformers.py --gguf FILE --converted DIR [--data DIR]
"""
import argparse
import glob
import os
import sys

import torch
from safetensors.torch import load_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--converted", required=True)
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = os.path.split(os.path.abspath(args.gguf))
    ref = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).state_dict()
    ours = {}
    for p in sorted(glob.glob(os.path.join(args.converted, "*.safetensors"))):
        ours.update(load_file(p))
    same = 0
    problems = []
    for name, t in ours.items():
        if name not in ref:
            problems.append(f"{name}: not in transformers' model")
            continue
        r = ref[name].to(t.dtype)
        if r.shape != t.shape:
            problems.append(f"{name}: shape {tuple(t.shape)} vs {tuple(r.shape)}")
        elif torch.equal(r, t):
            same += 1
        else:
            ulp = (r.float() - t.float()).abs().max().item()
            problems.append(f"{name}: max abs diff {ulp:.3e}")
    extra = [n for n in ref if n not in ours and not (n == "lm_head.weight")]
    print(f"tensors: {same}/{len(ours)} bit-identical to transformers' GGUF loader ({len(ref)} in its state dict)")
    for p in problems[:20]:
        print("  " + p)
    if extra:
        print(f"  only in transformers: {extra[:10]}")

    tok_ref = AutoTokenizer.from_pretrained(d, gguf_file=f)
    tok_ours = AutoTokenizer.from_pretrained(args.converted)
    texts = []
    for tsv in sorted(glob.glob(os.path.join(args.data, "*.tsv"))):
        for line in open(tsv, encoding="utf-8"):
            texts.extend(line.rstrip("\n").split("\t"))
    mism = sum(tok_ref(t)["input_ids"] != tok_ours(t)["input_ids"] for t in texts)
    print(f"tokenizer: {len(texts) - mism}/{len(texts)} texts with identical ids")
    ok = not problems and not mism
    print("RESULT:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
