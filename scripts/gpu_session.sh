#!/usr/bin/env bash
# One device call after the 0.5B GGUF was staged to /root/stage (../shared/scripts/stage-split.sh):
#   1. GPU tests (backend_ops, gptq_backend) and the decode-step benchmark (issue 4),
#   2. GPTQ quality on the real 0.5B model with the full 128 x 2048 calibration budget on the GPU:
#      RTN int4, GPTQ int4, GPTQ int4 --act-order, GPTQ int8, then `eval --device cuda` on
#      all of ddtp and debref and the first 1000 of hsk (issue 5),
#   3. the 7B-shape GPTQ benchmark (scripts/bench_gptq_gpu.sh); BENCH=0 skips it.
#   usage: scripts/gpu_session.sh BINDIR DATADIR GGUF_NAME
# BINDIR: stripped backend_ops, gptq_backend, hy-quant; DATADIR: the test-set TSVs. Logs in $OUT.
set -uo pipefail
bindir=$1 data=$2 gguf_name=$3
out=${OUT:-/tmp/out}; mkdir -p "$out"
export XDG_CACHE_HOME=/tmp/xdg
hq=$bindir/hy-quant
st=/root/stage
summary=()
step() { local name=$1; shift; local t0=$SECONDS; "$@"; local rc=$?; summary+=("$name rc=$rc $((SECONDS - t0))s"); return $rc; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
[ -f "$st/$gguf_name" ] || cat "$st/$gguf_name".part* > "$st/$gguf_name"
sha256sum "$st/$gguf_name" | tee "$out/gguf.sha256"

step tests timeout 200 "$bindir/backend_ops" --ignored --test-threads=1 --nocapture \
  --skip decode_step --skip cuda_timings --skip gptq_cuda_timings > "$out/backend_ops.log" 2>&1
grep -E "^test .*(FAILED|ok)$|test result|panicked" "$out/backend_ops.log" | tail -12
step gptq_backend timeout 60 "$bindir/gptq_backend" --ignored --test-threads=1 --nocapture > "$out/gptq_backend.log" 2>&1
step decode_bench timeout 90 "$bindir/backend_ops" --ignored --test-threads=1 --nocapture --exact decode_step_bench \
  > "$out/decode_step_bench.log" 2>&1
tail -30 "$out/decode_step_bench.log"

w=/root/q; mkdir -p "$w"
[ -f "$w/bf16/config.json" ] || step convert "$hq" convert --from-gguf "$st/$gguf_name" --dtype bf16 --out "$w/bf16" > "$out/convert.log" 2>&1
step rtn4 "$hq" quantize --model "$w/bf16" --method rtn --bits 4 --group-size 128 --out "$w/rtn4" --force > "$out/rtn4.log" 2>&1
for v in "gptq4:--bits 4" "gptq4act:--bits 4 --act-order" "gptq8:--bits 8"; do
  name=${v%%:*} flags=${v#*:}
  # shellcheck disable=SC2086
  step "$name" /usr/bin/time -f "$name: %e s wall, %M KB peak RSS" "$hq" quantize --model "$w/bf16" --method gptq \
    $flags --group-size 128 --device cuda --out "$w/$name" --force > "$out/$name.log" 2>&1
  tail -3 "$out/$name.log"
  cp "$w/$name/manifest.json" "$out/$name.manifest.json" 2>/dev/null
done
step eval timeout 260 "$hq" eval --original "$w/bf16" --quantized "$w/rtn4" "$w/gptq4" "$w/gptq4act" "$w/gptq8" \
  --testset "$data/ddtp.en-zh.tsv" "$data/debref.en-zh.tsv" "$data/hsk.zh-en.tsv" --limit 1000 --batch-size 32 --device cuda \
  --out "$out/eval" > "$out/eval.log" 2>&1
tail -25 "$out/eval.log"

[ "${BENCH:-1}" = 1 ] && step bench7b env HYQ_BIN="$hq" timeout 240 scripts/bench_gptq_gpu.sh /tmp/bench hy-mt1.5-7b 128 2048 > "$out/bench-7b.log" 2>&1
cp /tmp/bench/gptq4-hy-mt1.5-7b/manifest.json "$out/manifest-7b.json" 2>/dev/null
[ "${BENCH:-1}" = 1 ] && grep -vE "^\[hy-quant\] (synth|write)" "$out/bench-7b.log" | tail -30
echo "== summary"
printf '%s\n' "${summary[@]}"
