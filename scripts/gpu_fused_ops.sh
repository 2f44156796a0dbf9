#!/usr/bin/env bash
# The fused small ops of the GPU runner (LoadOptions::fuse_ops, HYQ_RUNNER_FUSE_OPS=1; issue 4),
# one device call per part (logs under $OUT):
#   tests: fused_ops_cuda (each fused op against the ops it replaces), argmax_cuda (pick and
#          margin against the host definition), runner_cuda with the
#          fused ops on (the GPU runner against the CPU reference runner), runner_fused
#          (fused configurations against separate linears, and graphs_match_eager_cuda:
#          replayed decode steps against eager ones, on the GPU);
#   e2e:   scripts/bench_decode_e2e.sh as shipped, then with HYQ_RUNNER_FUSE_OPS=1, then with
#          HYQ_CUDA_GRAPHS=1 as well (decode steps recorded once, replayed; same models,
#          reused): ms per decode step at the 7B shape, batch 1 and 16.
#   usage: scripts/gpu_fused_ops.sh BINDIR tests | BINDIR e2e [shipped|fused|graphs ...]
# BINDIR: stripped backend_ops, runner_fused and hy-quant (scripts/stage_gpu_bins.sh). HYQ_PRESET
# (default hy-mt1.5-7b) and HYQ_DEVICE=cpu try the e2e part without a GPU on a small preset.
set -uo pipefail
bindir=$1 part=$2
out=${OUT:-/tmp/out}; mkdir -p "$out"
export XDG_CACHE_HOME=/tmp/xdg
case $part in
  tests)
    timeout 200 "$bindir/backend_ops" --ignored --test-threads=1 --nocapture --exact fused_ops_cuda graph_replays_cuda \
      argmax_cuda > "$out/fused_ops.log" 2>&1; echo "fused_ops_cuda graph_replays_cuda argmax_cuda rc=$?"
    HYQ_RUNNER_FUSE_OPS=1 timeout 200 "$bindir/backend_ops" --ignored --test-threads=1 --nocapture \
      --exact runner_cuda > "$out/runner_cuda_fused_ops.log" 2>&1; echo "runner_cuda (fused ops) rc=$?"
    timeout 200 "$bindir/runner_fused" --ignored --test-threads=1 --nocapture > "$out/runner_fused.log" 2>&1
    echo "runner_fused rc=$?"
    grep -hE "^test .*(ok|FAILED)$|panicked|rel err|runner " "$out"/*.log | tail -40
    ;;
  e2e)
    # Variants to time (default all three; split them over calls if one would run past the
    # 600 s a call may take: the models under /tmp/e2e stay while the machine is warm).
    variants=("${@:3}"); [ ${#variants[@]} -gt 0 ] || variants=(shipped fused graphs)
    for v in "${variants[@]}"; do
      case $v in
        shipped) env=() ;;
        fused) env=(HYQ_RUNNER_FUSE_OPS=1) ;;
        graphs) env=(HYQ_RUNNER_FUSE_OPS=1 HYQ_CUDA_GRAPHS=1) ;;
        *) echo "unknown variant $v" >&2; exit 2 ;;
      esac
      mkdir -p "$out/$v"
      env "${env[@]}" OUT="$out/$v" HYQ_BIN="$bindir/hy-quant" \
        scripts/bench_decode_e2e.sh "${HYQ_E2E_DIR:-/tmp/e2e}" "${HYQ_PRESET:-hy-mt1.5-7b}" > "$out/e2e-$v.txt" 2>&1
    done
    for v in "${variants[@]}"; do echo "== $v"; cat "$out/e2e-$v.txt"; done
    grep -h "CUDA graphs" "$out"/graphs/*.log 2>/dev/null | sort | uniq -c
    ;;
  *) echo "usage: $0 BINDIR tests | BINDIR e2e [shipped|fused|graphs ...]" >&2; exit 2 ;;
esac
