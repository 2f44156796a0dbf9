#!/usr/bin/env bash
# Issue 5's comparison: hy-quant's GPTQ (whole model, measured) against the standard PyTorch
# GPTQ layer loop (scripts/gptq_reference.py loop: IST-DASLab/gptq llama.py structure) on the
# same synth checkpoint, samples and seqlen, in one run.
#   usage: scripts/bench_gptq_vs_reference.sh WORKDIR [PRESET] [SAMPLES] [SEQLEN] [REF_LAYERS]
#     PRESET      hy-mt1.5-7b (default) | hy-mt1.5-1.8b | tiny
#     REF_LAYERS  layers the reference runs (default 4); its whole-model time is extrapolated
#                 from them (first layer + later layers' mean), and labelled so.
# Builds nothing. Needs the hy-quant binary (HYQ_BIN, default target/release/hy-quant),
# python3 with torch + safetensors (PYTHON overrides python3) and an NVIDIA GPU.
# HYQ_DEVICE=cpu REF_DEVICE=cpu check the script without a GPU.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$1 preset=${2:-hy-mt1.5-7b} samples=${3:-128} seqlen=${4:-2048} ref_layers=${5:-4}
py=${PYTHON:-python3}
ref_device=${REF_DEVICE:-cuda}
mkdir -p "$work"
# Fail before the long part when the reference cannot run.
"$py" -c "import sys, torch, safetensors; sys.exit(0 if '$ref_device' == 'cpu' or torch.cuda.is_available() else 'torch sees no GPU')"

echo "== hy-quant (whole model) =="
"$here/bench_gptq_gpu.sh" "$work" "$preset" "$samples" "$seqlen" | tee "$work/ours.txt"
ours=$(sed -n 's/^wall (load -> save): \([0-9.]*\) s$/\1/p' "$work/ours.txt")
[ -n "$ours" ] || { echo "no wall time in $work/ours.txt"; exit 1; }

echo "== PyTorch reference loop ($ref_layers layers) =="
t0=$(date +%s.%N)
"$py" "$here/gptq_reference.py" loop --model "$work/synth-$preset" --nsamples "$samples" \
  --seqlen "$seqlen" --bits 4 --group-size 128 --damp 0.01 --device "$ref_device" \
  --layers "$ref_layers" --json "$work/reference.json"
t1=$(date +%s.%N)
echo "reference process wall (python start -> exit): $(awk "BEGIN {print $t1 - $t0}") s"

"$py" - "$work/reference.json" "$ours" "$preset" "$samples" "$seqlen" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ours, preset, samples, seqlen = float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
L, n = r["num_layers"], r["layers_done"]
if n < L:
    ref, how = r["extrapolated"]["whole_model_seconds"], f"EXTRAPOLATED from {n}/{L} layers"
else:
    ref, how = r["measured_seconds"], "measured"
print()
print(f"GPTQ 4-bit g128, {preset}, {samples} x {seqlen} tokens, {r['device_name']}")
print(f"{'':<34}{'whole model':>12}  how")
print(f"{'hy-quant quantize (load -> save)':<34}{ours:>10.1f} s  measured")
print(f"{'PyTorch reference loop':<34}{ref:>10.1f} s  {how}: embed {r['embed_seconds']:.1f} s, "
      f"{r['seconds_per_layer']:.2f} s/layer measured (per layer: "
      + ", ".join(f"{s:.1f}" for s in r["per_layer_seconds"]) + ")")
print(f"{'ratio reference / hy-quant':<34}{ref / ours:>10.2f} x")
ph = r["phase_seconds"]
print("reference phases over the measured layers: "
      + ", ".join(f"{k} {v:.1f} s" for k, v in ph.items()))
print("note: the reference does not pack or save; hy-quant's time includes writing the checkpoint.")
PY
