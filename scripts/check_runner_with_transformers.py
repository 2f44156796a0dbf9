#!/usr/bin/env python3
r"""Compare hy-quant's CPU runner with transformers on the same prompts.

Inputs
  --model DIR   a Hugging Face checkpoint dir (config.json, *.safetensors, tokenizer.json,
                tokenizer_config.json), e.g. the output of `hy-quant convert` of the Qwen2.5 GGUF.
  --dump DIR    what `hy-quant translate --dump-logits DIR` wrote: meta.json (prompts, prompt
                ids, greedy output ids, per-step top1-top2 margins) and logits.f32 (first
                generated position's logits, [n, vocab] f32 little-endian).
                If DIR/meta.json is missing and --hy-quant BIN is given, the dump is made first:
                BIN translate --model MODEL --input TSV --limit N --max-new-tokens M --dump-logits DIR

What it checks, per segment
  1. prompt ids: ours == tokenizer.apply_chat_template([{user: instruction}], add_generation_prompt=True)
     and == tokenizer(prompt_text, add_special_tokens=False)
  2. next-token logits on our prompt ids: max abs error, relative error (max abs / max |ref|),
     argmax agreement, top-5 overlap
  3. greedy continuation (pure greedy: no repetition penalty, no sampling; stop ids = ours):
     identical, or the first divergence with both sides' top1-top2 margin there (a small
     margin = near tie, an acceptable divergence)

Needs torch and transformers (written against torch 2.11 / transformers 5.x, not yet run). Runs in float32 with
eager attention and TF32 off so differences come from the runner, not from reduced precision.

Example (dump already made on the CPU box; /work/models/runner-dump-qwen0.5b-bf16 was made by
  hy-quant translate --model /work/models/qwen0.5b-bf16 --input tests/data/runner_check_20.tsv \
      --max-new-tokens 64 --batch-size 8 --dump-logits /work/models/runner-dump-qwen0.5b-bf16)
  python3 scripts/check_runner_with_transformers.py --model /work/models/qwen0.5b-bf16 \
      --dump /work/models/runner-dump-qwen0.5b-bf16
Or make the dump on the GPU box with a carried binary (16 cores there, about a minute):
  python3 scripts/check_runner_with_transformers.py --model MODEL_DIR --dump /tmp/dump \
      --hy-quant target/release/hy-quant --tsv tests/data/runner_check_20.tsv --limit 20
Exit status 1 when an argmax differs or a greedy divergence is not a near tie.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

NEAR_TIE = 0.05  # logits: a margin below this makes a divergence a near tie


def load_dump(d):
    with open(os.path.join(d, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    raw = np.fromfile(os.path.join(d, meta.get("logits_file", "logits.f32")), dtype="<f4")
    n, v = len(meta["items"]), meta["vocab"]
    if raw.size != n * v:
        sys.exit(f"{d}/logits.f32 holds {raw.size} floats, expected {n} x {v}")
    return meta, raw.reshape(n, v)


def instruction_of(prompt_text):
    """Recovers the user message from our rendered prompt (ChatML or HunYuan)."""
    if "<|im_start|>user\n" in prompt_text:
        return prompt_text.split("<|im_start|>user\n", 1)[1].rsplit("<|im_end|>\n<|im_start|>assistant\n", 1)[0]
    if "<｜hy_User｜>" in prompt_text:
        return prompt_text.split("<｜hy_User｜>", 1)[1].rsplit("<｜hy_Assistant｜>", 1)[0]
    if "<|start_header_id|>user<|end_header_id|>\n\n" in prompt_text:
        return prompt_text.split("<|start_header_id|>user<|end_header_id|>\n\n", 1)[1].rsplit("<|eot_id|>", 1)[0]
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--dump", required=True)
    ap.add_argument("--hy-quant", help="hy-quant binary, used to make the dump when it is missing")
    ap.add_argument("--tsv", help="segments for a new dump (first column)")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--to", help="target language for a new dump (default: guessed per segment)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--json-out", help="also write the per-segment results here")
    a = ap.parse_args()

    if not os.path.isfile(os.path.join(a.dump, "meta.json")):
        if not (a.hy_quant and a.tsv):
            sys.exit(f"{a.dump}/meta.json missing; pass --hy-quant BIN --tsv FILE to make it")
        cmd = [a.hy_quant, "translate", "--model", a.model, "--input", a.tsv, "--limit", str(a.limit),
               "--max-new-tokens", str(a.max_new_tokens), "--dump-logits", a.dump]
        if a.to:
            cmd += ["--to", a.to]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    try:
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
    except Exception:
        pass
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    meta, ours = load_dump(a.dump)
    dtype = getattr(torch, a.dtype)
    dev = a.device if (a.device != "cuda" or torch.cuda.is_available()) else "cpu"
    tok = AutoTokenizer.from_pretrained(a.model)
    kw = dict(attn_implementation="eager")
    try:
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, **kw)
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=dtype, **kw)
    model = model.to(dev).eval()
    stop_ids = list(meta["stop_ids"])
    max_new = int(meta.get("max_new_tokens", a.max_new_tokens))
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new, do_sample=False, num_beams=1, repetition_penalty=1.0,
        temperature=None, top_p=None, top_k=None,
        eos_token_id=stop_ids, pad_token_id=stop_ids[0] if stop_ids else 0,
    )

    rows = []
    for i, it in enumerate(meta["items"]):
        ids = it["prompt_ids"]
        # 1. tokenization
        tmpl_ok = "n/a"
        instr = instruction_of(it["prompt_text"])
        if instr is not None and getattr(tok, "chat_template", None):
            hf = tok.apply_chat_template([{"role": "user", "content": instr}], add_generation_prompt=True, tokenize=True)
            if isinstance(hf, dict) or hasattr(hf, "input_ids"):
                hf = hf["input_ids"]
            tmpl_ok = "yes" if list(hf) == ids else "NO"
        enc_ok = tok(it["prompt_text"], add_special_tokens=False)["input_ids"] == ids
        # 2. next-token logits
        x = torch.tensor([ids], device=dev)
        with torch.no_grad():
            ref = model(x).logits[0, -1].float().cpu().numpy().astype(np.float64)
        got = ours[i].astype(np.float64)
        v = min(len(ref), len(got))  # HF may pad the vocab of lm_head
        ref, got = ref[:v], got[:v]
        abs_err = float(np.abs(ref - got).max())
        rel_err = abs_err / float(np.abs(ref).max())
        top5 = len(set(np.argsort(-ref)[:5]) & set(np.argsort(-got)[:5]))
        # 3. greedy
        with torch.no_grad():
            out = model.generate(x, generation_config=gen_cfg, output_scores=True, return_dict_in_generate=True)
        hf_ids = out.sequences[0, len(ids):].tolist()
        hf_scores = [s[0].float().cpu().numpy() for s in out.scores]
        while hf_ids and hf_ids[-1] in stop_ids:
            hf_ids.pop()
        our_ids = it["output_ids"]
        if hf_ids == our_ids:
            greedy = "identical"
        else:
            k = next((j for j, (p, q) in enumerate(zip(hf_ids, our_ids)) if p != q), min(len(hf_ids), len(our_ids)))
            om = it["margins"][k] if k < len(it["margins"]) else float("nan")
            if k < len(hf_scores):
                s = np.sort(hf_scores[k])[-2:]
                hm = float(s[1] - s[0])
            else:
                hm = float("nan")
            tie = "near-tie" if min(om, hm) < NEAR_TIE else "REAL"
            greedy = f"diverge@{k} ({tie}: margin ours {om:.3f} hf {hm:.3f})"
        row = dict(i=i, template=tmpl_ok, encode="yes" if enc_ok else "NO", abs_err=abs_err, rel_err=rel_err,
                   argmax=bool(np.argmax(ref) == np.argmax(got)), top5=top5, greedy=greedy,
                   ours=it["output_text"], hf=tok.decode(hf_ids, skip_special_tokens=True).strip(),
                   source=it["source"])
        rows.append(row)
        print(f"[{i}] {it['source'][:40]!r}\n    ours: {row['ours'][:80]!r}\n    hf:   {row['hf'][:80]!r}", flush=True)

    print()
    print(f"{'#':>3} {'tmpl':>4} {'enc':>4} {'max abs':>9} {'rel':>9} {'argmax':>6} {'top5':>4}  greedy")
    for r in rows:
        print(f"{r['i']:>3} {r['template']:>4} {r['encode']:>4} {r['abs_err']:>9.2e} {r['rel_err']:>9.2e} "
              f"{'ok' if r['argmax'] else 'DIFF':>6} {r['top5']:>4}  {r['greedy']}")
    n = len(rows)
    ident = sum(r["greedy"] == "identical" for r in rows)
    real = sum("REAL" in r["greedy"] for r in rows)
    print(f"\nsummary: {n} segments, max rel err {max(r['rel_err'] for r in rows):.2e}, "
          f"argmax agree {sum(r['argmax'] for r in rows)}/{n}, greedy identical {ident}/{n}, "
          f"real divergences {real}, prompt-id mismatches "
          f"{sum(r['template'] == 'NO' or r['encode'] == 'NO' for r in rows)} (dtype {a.dtype}, device {dev})")
    if a.json_out:
        with open(a.json_out, "w", encoding="utf-8") as f:
            json.dump(rows, f, ensure_ascii=False, indent=1)
    return 1 if real or any(not r["argmax"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
