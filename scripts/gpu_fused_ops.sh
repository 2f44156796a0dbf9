#!/usr/bin/env bash
# GPU checks and timings of the runner's decode path (issue 4), one device call per part (logs
# under $OUT):
#   tests:   every GPU op test of backend_ops (among them fused_ops_cuda, argmax_cuda,
#            graph_replays_cuda, gptq_gemv_async_cuda: the asynchronous decode kernels against
#            the exact product), then runner_cuda with the fused small ops off (HYQ_RUNNER_FUSE_OPS=0;
#            on is the default the suite ran), runner_fused (fused configurations against
#            separate linears, and graphs_match_eager_cuda: replayed decode steps against eager ones);
#   kernels: decode_async_sweep (the asynchronous decode kernels against the streaming one and
#            cuBLAS on the 7B shapes); the fastest asynchronous variant on the fused layer at
#            m = 1 goes to /tmp/best_gemv for the e2e part;
#   prefetch: pdl_chain_matches_cuda (decode GEMVs as programmatic dependent launches against
#            plain ones), gptq_gemv_experiments_cuda (the prefetching and bulk-copy kernels
#            bit-identical to production), gptq_gemv_async_cuda (the folded kernels against the
#            exact product), decode_feed_sweep (prefetch distances, the bulk-copy kernels and the loads-only ceiling
#            on the fused 7B layer);
#   pdlall:  every GPU op test and runner_fused with HYQ_PDL=all (the decode step's small kernels
#            as programmatic dependent launches too), runner_fused with the defaults;
#   profile: Nsight Compute on decode_feed_profile (the production kernel, its loads-only twin,
#            two bulk-copy kernels on the gate|up shape at m = 1);
#   e2e:     scripts/bench_decode_e2e.sh (ms per decode step at the 7B shape, batch 1 and 16) per
#            variant: shipped (the defaults: fused linears and small ops, device picks, CUDA
#            graphs), plain (HYQ_RUNNER_FUSE_OPS=0 HYQ_CUDA_GRAPHS=0: the defaults before
#            2026-12-01), fused (HYQ_CUDA_GRAPHS=0), async (the defaults with
#            HYQ_GEMV_KERNEL=<label>: HYQ_ASYNC_LABEL, else /tmp/best_gemv), nopdl (HYQ_PDL=0),
#            pdlgemv / pdlall (HYQ_PDL=gemv / all: PDL for the GEMVs only / the small kernels too),
#            pf<D> (HYQ_GEMV_KERNEL=s4k2w1p<D>: the L2-prefetching decode kernel), k_<label>
#            (HYQ_GEMV_KERNEL=<label>, e.g. k_b4k2w1: the bulk-copy decode kernel).
#   usage: scripts/gpu_fused_ops.sh BINDIR tests | BINDIR kernels | BINDIR pdlall | BINDIR prefetch | BINDIR profile |
#          BINDIR e2e [shipped|plain|fused|async|nopdl|pf<D> ...]
# BINDIR: stripped backend_ops, runner_fused and hy-quant (scripts/stage_gpu_bins.sh). HYQ_PRESET
# (default hy-mt1.5-7b) and HYQ_DEVICE=cpu try the e2e part without a GPU on a small preset.
set -uo pipefail
bindir=$1 part=$2
out=${OUT:-/tmp/out}; mkdir -p "$out"
export XDG_CACHE_HOME=/tmp/xdg
case $part in
  tests)
    # Every GPU op test of backend_ops (the benches, sweeps and the experiments module left out).
    timeout 300 "$bindir/backend_ops" --ignored --test-threads=1 --nocapture --skip bench --skip sweep \
      --skip timings --skip experiments > "$out/backend_ops.log" 2>&1; echo "backend_ops GPU tests rc=$?"
    HYQ_RUNNER_FUSE_OPS=0 timeout 200 "$bindir/backend_ops" --ignored --test-threads=1 --nocapture \
      --exact runner_cuda > "$out/runner_cuda_plain_ops.log" 2>&1; echo "runner_cuda (separate small ops) rc=$?"
    timeout 200 "$bindir/runner_fused" --ignored --test-threads=1 --nocapture > "$out/runner_fused.log" 2>&1
    echo "runner_fused rc=$?"
    grep -hE "^test .*(ok|FAILED)$|panicked|rel err|runner " "$out"/*.log | tail -70
    ;;
  kernels)
    timeout 400 "$bindir/backend_ops" --ignored --test-threads=1 --nocapture --exact decode_async_sweep \
      > "$out/decode_async_sweep.log" 2>&1; echo "decode_async_sweep rc=$?"
    grep -E "^decode_async|^\|" "$out/decode_async_sweep.log"
    # The fastest asynchronous variant on the fused layer at m = 1 (column 4 of the table).
    awk -F'|' '$2 ~ /^ 1 $/ && $3 ~ /^ a/ {split($5, t, " "); print t[1], $3}' "$out/decode_async_sweep.log" |
      sort -n | head -1 | awk '{print $2}' > /tmp/best_gemv
    echo "best asynchronous variant at m = 1 (fused layer): $(cat /tmp/best_gemv)"
    ;;
  pdlall)
    # The whole GPU op suite and runner_fused with the decode step's small kernels launched as
    # programmatic dependent launches too (HYQ_PDL=all), then runner_fused with the defaults.
    HYQ_PDL=all timeout 300 "$bindir/backend_ops" --ignored --test-threads=1 --nocapture --skip bench \
      --skip sweep --skip timings --skip experiments > "$out/pdl_all_backend_ops.log" 2>&1
    echo "HYQ_PDL=all backend_ops GPU tests rc=$?"
    HYQ_PDL=all timeout 200 "$bindir/runner_fused" --ignored --test-threads=1 --nocapture \
      > "$out/pdl_all_runner_fused.log" 2>&1; echo "HYQ_PDL=all runner_fused rc=$?"
    timeout 200 "$bindir/runner_fused" --ignored --test-threads=1 --nocapture > "$out/runner_fused.log" 2>&1
    echo "runner_fused rc=$?"
    grep -hE "^test result|FAILED|panicked|chains bit-identical" "$out"/pdl_all_*.log "$out/runner_fused.log"
    ;;
  prefetch)
    timeout 200 "$bindir/backend_ops" --ignored --test-threads=1 --nocapture --exact pdl_chain_matches_cuda \
      gptq_gemv_experiments_cuda gptq_gemv_async_cuda > "$out/prefetch_tests.log" 2>&1; rc=$?
    echo "PDL and feed tests rc=$rc"
    [ $rc -eq 0 ] || { tail -20 "$out/prefetch_tests.log"; exit 1; }
    timeout 300 "$bindir/backend_ops" --ignored --test-threads=1 --nocapture --exact decode_feed_sweep \
      > "$out/decode_feed_sweep.log" 2>&1; echo "decode_feed_sweep rc=$?"
    grep -hE "^test .*(ok|FAILED)$|panicked|bit-identical|rel err|folded" "$out/prefetch_tests.log"
    grep -E "^decode_feed|^\||^\(|m=1:" "$out/decode_feed_sweep.log"
    ;;
  profile)
    # Nsight Compute on decode_feed_profile's second pass (the first warms up): stall reasons,
    # occupancy and memory throughput of each way of feeding the decode kernel.
    ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    timeout 300 "$ncu" --clock-control none -k regex:gptq_gemv_ --launch-skip 4 --launch-count 4 \
      --section SpeedOfLight --section WarpStateStats --section LaunchStats --section Occupancy \
      --section MemoryWorkloadAnalysis --section SchedulerStats \
      "$bindir/backend_ops" --ignored --test-threads=1 --nocapture --exact decode_feed_profile \
      > "$out/decode-feed-ncu.txt" 2>&1; echo "ncu rc=$?"
    grep -E "gptq_gemv_|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Block Limit|Stall|Warp Cycles Per Issued|Issued Warp|No Eligible|Active Warps Per|Eligible Warps" \
      "$out/decode-feed-ncu.txt" | head -120
    ;;
  e2e)
    # Variants to time (default shipped and plain; split them over calls if one would run past the
    # 600 s a call may take: the models under /tmp/e2e stay while the machine is warm).
    variants=("${@:3}"); [ ${#variants[@]} -gt 0 ] || variants=(shipped plain)
    for v in "${variants[@]}"; do
      case $v in
        shipped) env=() ;;
        plain) env=(HYQ_RUNNER_FUSE_OPS=0 HYQ_CUDA_GRAPHS=0) ;;
        fused) env=(HYQ_CUDA_GRAPHS=0) ;;
        async) env=(HYQ_GEMV_KERNEL="${HYQ_ASYNC_LABEL:-$(cat /tmp/best_gemv)}") ;;
        nopdl) env=(HYQ_PDL=0) ;;
        pdlgemv) env=(HYQ_PDL=gemv) ;;
        pdlall) env=(HYQ_PDL=all) ;;
        pf*) env=(HYQ_GEMV_KERNEL="s4k2w1p${v#pf}") ;;
        k_*) env=(HYQ_GEMV_KERNEL="${v#k_}") ;;
        *) echo "unknown variant $v" >&2; exit 2 ;;
      esac
      echo "== $v: ${env[*]}" >&2
      mkdir -p "$out/$v"
      env "${env[@]}" OUT="$out/$v" HYQ_BIN="$bindir/hy-quant" \
        scripts/bench_decode_e2e.sh "${HYQ_E2E_DIR:-/tmp/e2e}" "${HYQ_PRESET:-hy-mt1.5-7b}" > "$out/e2e-$v.txt" 2>&1
    done
    for v in "${variants[@]}"; do echo "== $v"; cat "$out/e2e-$v.txt"; done
    grep -h "CUDA graphs" "$out"/*/*.log 2>/dev/null | sort | uniq -c
    ;;
  *) echo "usage: $0 BINDIR tests | BINDIR kernels | BINDIR prefetch | BINDIR profile | BINDIR e2e [VARIANT ...]" >&2
     exit 2 ;;
esac
