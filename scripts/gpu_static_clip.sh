#!/usr/bin/env bash
# One device call (issue 5, then issue 4's profile), logs under $OUT:
#   1. the GPU GPTQ tests (backend_ops gptq*, gptq_backend) on the device-side up-front group fit,
#   2. the 7B-shape GPTQ benchmark twice: default flags, then --act-order static-groups --clip-search,
#   3. Nsight Compute on the W4A16 m = 1 decode kernel (full section set + stall reasons).
#   usage: scripts/gpu_static_clip.sh BINDIR [PRESET]    (NCU=0 skips 3, BENCH=0 skips 1-2)
# BINDIR: stripped backend_ops, gptq_backend, hy-quant built here (see scripts/gpu_verify_gptq.sh).
set -uo pipefail
bindir=$1 preset=${2:-hy-mt1.5-7b}
out=${OUT:-/tmp/out}; mkdir -p "$out"
export XDG_CACHE_HOME=/tmp/xdg
if [ "${BENCH:-1}" != 0 ]; then
TEST_FILTER=gptq scripts/gpu_verify_gptq.sh "$bindir" "$preset" 128 2048 200 > "$out/default.txt" 2>&1
mv "$out/manifest-$preset.json" "$out/manifest-default.json" 2>/dev/null
mv "$out/bench-$preset.log" "$out/bench-default.log" 2>/dev/null
TESTS=0 HYQ_GPTQ_FLAGS="--act-order static-groups --clip-search" \
  scripts/gpu_verify_gptq.sh "$bindir" "$preset" 128 2048 200 > "$out/static-clip.txt" 2>&1
fi
if [ "${NCU:-1}" != 0 ] && command -v ncu >/dev/null; then
  timeout 150 ncu --clock-control none --set full -k regex:gptq_gemv_stream_w4_m8_u4_bf16 -c 8 \
    "$bindir/backend_ops" --ignored --exact decode_step_bench > "$out/ncu-w4-full.txt" 2>&1
  echo "ncu full rc=$?" >> "$out/summary.txt"
  timeout 90 ncu --clock-control none -k regex:gptq_gemv_stream_w4_m8_u4_bf16 -c 8 \
    --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
    "$bindir/backend_ops" --ignored --exact decode_step_bench > "$out/ncu-w4-stalls.txt" 2>&1
  echo "ncu stalls rc=$?" >> "$out/summary.txt"
fi
echo "== default"; tail -22 "$out/default.txt"
echo "== static groups + clip search"; tail -22 "$out/static-clip.txt"
echo "== ncu"; cat "$out/summary.txt" 2>/dev/null
grep -E "gptq_gemv_stream|Duration|DRAM Throughput|Registers Per|Achieved Occupancy" "$out/ncu-w4-full.txt" 2>/dev/null | head -24
