#!/usr/bin/env bash
# Fifth session's GPU checks, one device call per part (logs under $OUT):
#   tests: every backend_ops GPU test but the benchmarks and sweeps, gptq_backend and
#          runner_fused (--ignored);
#   e2e:   scripts/bench_decode_e2e.sh with the fused q|k|v and gate|up linears, then again
#          with HYQ_RUNNER_FUSE=0 (the same models, reused).
#   usage: scripts/gpu_session5.sh BINDIR tests|e2e
# BINDIR: stripped backend_ops, gptq_backend, runner_fused and hy-quant built here.
set -uo pipefail
bindir=$1 part=$2
out=${OUT:-/tmp/out}; mkdir -p "$out"
export XDG_CACHE_HOME=/tmp/xdg
case $part in
  tests)
    timeout 280 "$bindir/backend_ops" --ignored --test-threads=1 --nocapture --skip decode_ --skip timings \
      --skip sweep --skip kernels_compile > "$out/backend_ops.log" 2>&1
    echo "backend_ops rc=$?"
    for t in gptq_backend runner_fused; do
      timeout 120 "$bindir/$t" --ignored --test-threads=1 --nocapture > "$out/$t.log" 2>&1
      echo "$t rc=$?"
    done
    grep -hE "^test .*(ok|FAILED)$|^test result|panicked" "$out"/*.log | tail -40
    ;;
  e2e)
    HYQ_BIN=$bindir/hy-quant scripts/bench_decode_e2e.sh /tmp/e2e hy-mt1.5-7b > "$out/e2e-fused.txt" 2>&1
    mkdir -p "$out/unfused"
    HYQ_RUNNER_FUSE=0 OUT=$out/unfused HYQ_BIN=$bindir/hy-quant scripts/bench_decode_e2e.sh /tmp/e2e hy-mt1.5-7b \
      > "$out/e2e-unfused.txt" 2>&1
    echo "== fused q|k|v, gate|up"; cat "$out/e2e-fused.txt"
    echo "== separate (HYQ_RUNNER_FUSE=0)"; cat "$out/e2e-unfused.txt"
    ;;
esac
