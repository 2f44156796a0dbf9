#!/usr/bin/env bash
# One device call: the GPU GPTQ tests, then GPTQ benchmarks; logs under $OUT.
#   usage: scripts/gpu_verify_gptq.sh BINDIR [PRESETS] [SAMPLES] [SEQLEN] [BENCH_TIMEOUT_S]
# BINDIR holds stripped backend_ops, gptq_backend and hy-quant built on the dev box
# (cargo test --release --no-run --test backend_ops --test gptq_backend; cargo build --release).
# PRESETS: space-separated synth presets ("hy-mt1.5-1.8b hy-mt1.5-7b"); "" runs no benchmark.
# TESTS=0 skips the tests; TEST_FILTER narrows backend_ops to matching tests.
set -uo pipefail
bindir=$1 presets=${2-hy-mt1.5-1.8b} samples=${3:-128} seqlen=${4:-2048} limit=${5:-300}
out=${OUT:-/tmp/out}; mkdir -p "$out"
export XDG_CACHE_HOME=/tmp/xdg
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
summary=()
if [ "${TESTS:-1}" != 0 ]; then
  for t in backend_ops gptq_backend; do
    filter=()
    [ "$t" = backend_ops ] && [ -n "${TEST_FILTER:-}" ] && filter=("$TEST_FILTER")
    timeout 240 "$bindir/$t" --ignored --test-threads=1 --nocapture "${filter[@]}" > "$out/$t.log" 2>&1
    summary+=("$t rc=$?")
    grep -E "^test |test result|FAILED|panicked|ms per chunk|gptq_quantize |gptq_output_errors " "$out/$t.log" | tail -40
  done
fi
for preset in $presets; do
  HYQ_BIN=$bindir/hy-quant timeout "$limit" scripts/bench_gptq_gpu.sh /tmp/bench "$preset" "$samples" "$seqlen" \
    > "$out/bench-$preset.log" 2>&1
  summary+=("bench $preset rc=$?")
  cp /tmp/bench/gptq4-$preset/manifest.json "$out/manifest-$preset.json" 2>/dev/null
  cp /tmp/bench/quantize.log "$out/quantize-$preset.log" 2>/dev/null
  rm -rf /tmp/bench/gptq4-$preset
  echo "== $preset"
  grep -vE "^\[hy-quant\] (synth|write)" "$out/bench-$preset.log" | tail -28
done
echo "== summary"
printf '%s\n' "${summary[@]}"
