#!/usr/bin/env bash
# Whole decode steps through the GPU runner (issue 4): a synth model of the HY-MT 7B shape in
# bf16, RTN int8 and RTN int4 g128 (quantized on the GPU), then `translate --device cuda` of 1
# and of 16 segments with 64 new tokens each. Per step = batch / decode-only tokens per second
# (every step of a run decodes all its segments unless one finishes early: the JSON lines say).
# Everything a step does is in it: 32 layers of norms, RoPE, attention, the seven linears, the
# lm_head, the logits download and the host-side sampling.
#   usage: scripts/bench_decode_e2e.sh WORKDIR [PRESET]      (HYQ_BIN overrides the binary;
#          HYQ_E2E_MODELS, e.g. "rtn4", times only those of synth-PRESET, rtn8, rtn4)
set -uo pipefail
bin=${HYQ_BIN:-target/release/hy-quant}
device=${HYQ_DEVICE:-cuda}   # HYQ_DEVICE=cpu checks the script without a GPU
work=$1 preset=${2:-hy-mt1.5-7b}
out=${OUT:-/tmp/out}; mkdir -p "$work" "$out"
model=$work/synth-$preset
[ -f "$model/config.json" ] || "$bin" synth --arch hunyuan-dense --preset "$preset" --dtype bf16 --seed 1 \
  --out "$model" --force > /dev/null
models=${HYQ_E2E_MODELS:-synth-$preset rtn8 rtn4}
for bits in 8 4; do
  case " $models " in *" rtn$bits "*) ;; *) continue ;; esac
  [ -f "$work/rtn$bits/config.json" ] || "$bin" quantize --model "$model" --out "$work/rtn$bits" --method rtn \
    --bits "$bits" --group-size 128 --device "$device" --force > "$out/e2e-quantize-rtn$bits.log" 2>&1
done
RANDOM=3
for _ in $(seq 16); do
  s=""; for _ in $(seq 12); do s+="w$((6 + RANDOM % 1000)) "; done; echo "${s% }"
done > "$work/segments.txt"
rows=()
for name in $models; do
  for batch in 1 16; do
    log=$out/e2e-$name-b$batch
    "$bin" translate --model "$work/$name" --device "$device" --input "$work/segments.txt" --limit "$batch" \
      --batch-size "$batch" --max-new-tokens 64 --json > "$log.jsonl" 2> "$log.log"
    tps=$(grep -o "decode-only steps [0-9.]* tokens/s" "$log.log" | awk '{print $3}')
    short=$(grep -vc '"finish":"Length"' "$log.jsonl")
    if [ -n "$tps" ]; then
      rows+=("| $name | $batch | $tps | $(awk "BEGIN {printf \"%.2f\", $batch * 1000 / $tps}") | $short |")
    else
      rows+=("| $name | $batch | failed: $(tail -1 "$log.log") | | |")
    fi
  done
done
echo "| model | batch | decode-only tokens/s | ms per step | segments ended early |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
