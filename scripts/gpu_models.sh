#!/usr/bin/env bash
# One device call on a real model staged to /root/stage (../shared/scripts/stage-split.sh):
# convert the GGUF to bf16, quantize it every way VARIANTS asks, and `eval --device cuda` all of
# them against the bf16 original on ddtp, debref and hsk (translation drift with paired
# bootstrap intervals, and the VRAM table: weights resident, allocator and cuMemGetInfo peaks,
# KV cache). Optionally times an eval of 1000 segments through two models (TIME_PAIR=variant).
#   usage: scripts/gpu_models.sh BINDIR DATADIR GGUF_NAME LABEL LIMIT VARIANT...
#     VARIANT  name:quantize flags, e.g. "rtn4:--method rtn --bits 4"
#              "gptq4d10:--method gptq --bits 4 --damp 0.1" (group size 128 unless given)
#     LIMIT    --limit for eval (the first LIMIT pairs of each test set)
# Steps past DEADLINE seconds (default 560) are skipped. Logs and reports: $OUT/LABEL.tgz.
set -uo pipefail
bindir=$1 data=$2 gguf_name=$3 label=$4 limit=$5
shift 5
out=/tmp/logs/$label; mkdir -p "$out"
export XDG_CACHE_HOME=/tmp/xdg
hq=$bindir/hy-quant
st=/root/stage
deadline=${DEADLINE:-560}
# shellcheck source=scripts/gpu_steps.sh
. "$(dirname "$0")/gpu_steps.sh"
[ -f "$st/$gguf_name" ] || cat "$st/$gguf_name".part* > "$st/$gguf_name"
sha256sum "$st/$gguf_name" | tee "$out/$label-gguf.sha256"

w=/root/q/$label; mkdir -p "$w"
[ -f "$w/bf16/config.json" ] || step convert "$hq" convert --from-gguf "$st/$gguf_name" --dtype bf16 \
  --out "$w/bf16" > "$out/$label-convert.log" 2>&1
models=()
for v in "$@"; do
  name=${v%%:*} flags=${v#*:}
  case " $flags " in *" --group-size "*) ;; *) flags+=" --group-size 128" ;; esac
  dev=cuda; case " $flags " in *" --method rtn "*) dev=cpu ;; esac
  # shellcheck disable=SC2086
  step "$label $name" /usr/bin/time -f "$name: %e s wall, %M KB peak RSS" "$hq" quantize --model "$w/bf16" \
    $flags --device $dev --out "$w/$name" --force > "$out/$label-$name.log" 2>&1 && models+=("$w/$name")
  tail -1 "$out/$label-$name.log"
done
step "$label eval" "$hq" eval --original "$w/bf16" --quantized "${models[@]}" \
  --testset "$data/ddtp.en-zh.tsv" "$data/debref.en-zh.tsv" "$data/hsk.zh-en.tsv" --limit "$limit" \
  --batch-size 32 --device cuda --json --out "$out/$label-eval" > "$out/$label-eval.json" 2> "$out/$label-eval.log"
cat "$out/$label-eval/eval.md" 2>/dev/null || tail -40 "$out/$label-eval.log"
if [ -n "${TIME_PAIR:-}" ]; then
  step "$label 2-model eval 1000 hsk" /usr/bin/time -f "two-model eval: %e s wall" "$hq" eval --original "$w/bf16" \
    --quantized "$w/$TIME_PAIR" --testset "$data/hsk.zh-en.tsv" --limit 1000 --batch-size 32 --device cuda \
    --out "$out/$label-pair" > "$out/$label-pair.log" 2>&1
  grep -E "two-model eval" "$out/$label-pair.log"
fi
tar czf "${OUT:-/tmp}/$label.tgz" -C /tmp/logs "$label"
echo "== summary $label"
printf '%s\n' "${summary[@]}"
