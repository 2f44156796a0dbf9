#!/usr/bin/env bash
# GPTQ on the GPU, end to end, at HY-MT 7B shape (issue 5's target on one H100: load -> save
# <= 60 s, peak VRAM <= 8 GiB, host RSS <= 4 GiB, 128 x 2048 calibration tokens, 4-bit g128).
#   usage: scripts/bench_gptq_gpu.sh WORKDIR [PRESET] [SAMPLES] [SEQLEN] [TOKENIZER_DIR]
#     PRESET        hy-mt1.5-7b (default) | hy-mt1.5-1.8b | tiny
#     TOKENIZER_DIR a directory with the model's tokenizer.json (+ tokenizer_config.json);
#                   without it synth's word-level tokenizer (w6, w7, ...) is used with a
#                   random corpus of those words, which is enough for timing.
# Prints the wall time, the manifest's phases, the peak VRAM (nvidia-smi, polled every
# 100 ms, minus the reading before the run) and the peak host RSS. HYQ_BIN overrides the binary;
# HYQ_GPTQ_FLAGS adds quantize flags, e.g. "--act-order static-groups --clip-search".
set -euo pipefail
bin=${HYQ_BIN:-target/release/hy-quant}
device=${HYQ_DEVICE:-cuda}   # HYQ_DEVICE=cpu checks the script without a GPU
read -r -a extra <<< "${HYQ_GPTQ_FLAGS:-}"
work=$1 preset=${2:-hy-mt1.5-7b} samples=${3:-128} seqlen=${4:-2048} tokdir=${5:-}
mkdir -p "$work"
model=$work/synth-$preset
if [ ! -f "$model/config.json" ]; then
  t0=$(date +%s.%N)
  "$bin" synth --arch hunyuan-dense --preset "$preset" --dtype bf16 --seed 1 --out "$model" --force >/dev/null
  echo "synth $preset: $(awk "BEGIN {print $(date +%s.%N) - $t0}") s"
fi
corpus=$work/calib.jsonl
if [ -n "$tokdir" ]; then
  cp "$tokdir/tokenizer.json" "$model/"
  [ -f "$tokdir/tokenizer_config.json" ] && cp "$tokdir/tokenizer_config.json" "$model/"
  corpus_args=()   # the bundled corpus
else
  if [ ! -f "$corpus" ]; then
    RANDOM=7
    for d in $(seq 1 3000); do
      words=""
      for w in $(seq 1 120); do words+="w$((6 + RANDOM % 1000)) "; done
      printf '{"kind":"text","lang":"en","text":"%s","source":"bench"}\n' "${words% }"
    done > "$corpus"
  fi
  corpus_args=(--calib "$corpus")
fi

out=$work/gptq4-$preset
vram0=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null || echo 0)
peak_file=$work/vram_peak
echo "$vram0" > "$peak_file"
( while :; do
    v=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null || echo 0)
    p=$(cat "$peak_file"); [ "$v" -gt "$p" ] && echo "$v" > "$peak_file"
    sleep 0.1
  done ) &
poller=$!
trap 'kill $poller 2>/dev/null || true' EXIT
t0=$(date +%s.%N)
status=0
if [ -x /usr/bin/time ]; then
  /usr/bin/time -f "peak host RSS: %M KB" -o "$work/time.txt" \
    "$bin" quantize --model "$model" --out "$out" --force --method gptq --bits 4 --group-size 128 \
    --calib-samples "$samples" --calib-seqlen "$seqlen" "${corpus_args[@]}" "${extra[@]}" \
    --device "$device" > "$work/quantize.log" 2>&1 || status=$?
else
  "$bin" quantize --model "$model" --out "$out" --force --method gptq --bits 4 --group-size 128 \
    --calib-samples "$samples" --calib-seqlen "$seqlen" "${corpus_args[@]}" "${extra[@]}" \
    --device "$device" > "$work/quantize.log" 2>&1 &
  pid=$!
  hwm=0
  while kill -0 $pid 2>/dev/null; do
    h=$(awk '/VmHWM/ {print $2}' /proc/$pid/status 2>/dev/null || echo 0)
    [ -n "$h" ] && [ "$h" -gt "$hwm" ] && hwm=$h
    sleep 0.2
  done
  wait $pid || status=$?
  echo "peak host RSS: $hwm KB (polled)" > "$work/time.txt"
fi
t1=$(date +%s.%N)
kill $poller 2>/dev/null || true
tail -5 "$work/quantize.log"
[ $status -eq 0 ] || { echo "quantize failed with status $status"; exit $status; }
echo "wall (load -> save): $(awk "BEGIN {print $t1 - $t0}") s"
cat "$work/time.txt"
echo "peak VRAM (nvidia-smi, device 0): $(( $(cat "$peak_file") - vram0 )) MiB above the $vram0 MiB before the run"
python3 - "$out/manifest.json" <<'PY' 2>/dev/null || grep -o '"phases":\[[^]]*\]' "$out/manifest.json"
import json, sys
m = json.load(open(sys.argv[1]))
print(f"manifest wall_seconds: {m['wall_seconds']:.1f}")
for p in m["phases"]:
    print(f"  {p.get('phase', p.get('name'))}: {p.get('seconds', 0):.2f} s")
PY
