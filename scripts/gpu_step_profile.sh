#!/usr/bin/env bash
# Where a decode step's time goes (issue 4): Nsight Compute's duration of every kernel of
# `translate --device cuda` on the synth HY-MT 7B shape (bf16 and RTN int4 g128, made as in
# scripts/bench_decode_e2e.sh, reused from WORKDIR), for 2 and for 10 new tokens of one
# segment; the difference is 8 decode steps, so per kernel (name and grid) the table gives
# launches and device time per decode step, without the load, the prompt step or the tokenizer.
# Graphs off (HYQ_CUDA_GRAPHS=0): ncu then sees every launch on its own; the kernels are the
# same ones a graph replays. Kernel durations only: launch gaps are not in the sums (the wall
# time per step is what scripts/bench_decode_e2e.sh reports).
#   usage: scripts/gpu_step_profile.sh BINDIR [WORKDIR [MODEL ...]]   (logs and CSVs under $OUT;
#          MODEL: rtn4 and/or synth-hy-mt1.5-7b, default both)
set -uo pipefail
bin=$1/hy-quant work=${2:-/tmp/e2e} preset=hy-mt1.5-7b
models=("${@:3}"); [ ${#models[@]} -gt 0 ] || models=(rtn4 "synth-$preset")
out=${OUT:-/tmp/out}; mkdir -p "$work" "$out"
export XDG_CACHE_HOME=/tmp/xdg HYQ_CUDA_GRAPHS=0
model=$work/synth-$preset
[ -f "$model/config.json" ] || "$bin" synth --arch hunyuan-dense --preset "$preset" --dtype bf16 --seed 1 \
  --out "$model" --force > /dev/null
[ -f "$work/rtn4/config.json" ] || "$bin" quantize --model "$model" --out "$work/rtn4" --method rtn \
  --bits 4 --group-size 128 --device cuda --force > "$out/quantize-rtn4.log" 2>&1
echo "w11 w22 w33 w44 w55 w66 w77 w88 w99 w111 w222 w333" > "$work/one.txt"
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for name in "${models[@]}"; do
  for tokens in 2 10; do
    "$bin" translate --model "$work/$name" --device cuda --input "$work/one.txt" --limit 1 --batch-size 1 \
      --max-new-tokens "$tokens" --json > /dev/null 2> "$out/warm-$name.log"   # kernel cache
    timeout 250 "$ncu" --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv \
      "$bin" translate --model "$work/$name" --device cuda --input "$work/one.txt" --limit 1 --batch-size 1 \
      --max-new-tokens "$tokens" --json > "$out/ncu-$name-$tokens.csv" 2> "$out/ncu-$name-$tokens.log"
    echo "ncu $name $tokens tokens rc=$? ($(grep -c gpu__time_duration "$out/ncu-$name-$tokens.csv") kernels)"
  done
done
python3 - "$out" "${models[@]}" <<'PY'
import csv, sys, collections
out = sys.argv[1]
def load(path):
    t = collections.defaultdict(lambda: [0, 0.0])
    with open(path) as f:
        rows = [l for l in f if l.startswith('"')]
    for r in csv.DictReader(rows):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        v = float(r["Metric Value"].replace(",", ""))
        unit = r["Metric Unit"]
        us = v / 1000 if unit.startswith("n") else v * 1000 if unit.startswith("m") else v
        key = (r["Kernel Name"][:60], r["Grid Size"])
        t[key][0] += 1
        t[key][1] += us
    return t
for name in sys.argv[2:]:
    a, b = load(f"{out}/ncu-{name}-2.csv"), load(f"{out}/ncu-{name}-10.csv")
    rows = []
    for k in set(a) | set(b):
        n = (b.get(k, [0, 0])[0] - a.get(k, [0, 0])[0]) / 8
        us = (b.get(k, [0, 0])[1] - a.get(k, [0, 0])[1]) / 8
        if n > 0 or us > 1:
            rows.append((us, n, k))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"\n== {name}: kernel time per decode step {total:.0f} us ({sum(r[1] for r in rows):.0f} launches)")
    print("| kernel | grid | launches/step | us/step | us/launch |")
    print("|---|---|---|---|---|")
    for us, n, (kn, grid) in rows[:25]:
        print(f"| {kn} | {grid} | {n:.1f} | {us:.1f} | {us / n if n else 0:.2f} |")
PY
