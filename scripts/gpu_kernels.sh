#!/usr/bin/env bash
# One device call for the decode path (issue 4): the GPU tests named in TESTS (the GPTQ GEMV
# kernels and the 16-bit KV cache against the CPU and against cuBLAS), the decode-kernel
# variant sweep, the decode-step benchmark at the 7B shapes, and the VRAM of an eval through a
# synth HY-MT 1.8B (bf16 vs RTN int4; batch 16, 64 new tokens; the KV cache column).
#   usage: TESTS="gptq_cuda ..." scripts/gpu_kernels.sh BINDIR DATADIR
# BINDIR: stripped backend_ops and hy-quant; DATADIR: holds synth.en-zh.tsv (a word-level toy
# set for synth's tokenizer). Steps past DEADLINE seconds (default 400) are skipped; logs in
# $OUT/kernels.tgz.
set -uo pipefail
bindir=$1 data=$2 deadline=${DEADLINE:-400}
out=/tmp/logs/kernels; mkdir -p "$out"
export XDG_CACHE_HOME=/tmp/xdg
# shellcheck source=scripts/gpu_steps.sh
. "$(dirname "$0")/gpu_steps.sh"
b=$bindir/backend_ops hq=$bindir/hy-quant
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
# shellcheck disable=SC2086
step tests timeout 220 "$b" --ignored --test-threads=1 --nocapture --exact $TESTS > "$out/tests.log" 2>&1
grep -E "^test .*(ok|FAILED)$|test result|panicked" "$out/tests.log" | tail -24
step sweep timeout 150 "$b" --ignored --test-threads=1 --nocapture --exact decode_gemv_variant_sweep \
  > "$out/sweep.log" 2>&1
grep -E "^layer" "$out/sweep.log"
step bench timeout 90 "$b" --ignored --test-threads=1 --nocapture --exact decode_step_bench > "$out/bench.log" 2>&1
tail -42 "$out/bench.log"
s=/tmp/s18
step synth "$hq" synth --arch hunyuan-dense --preset hy-mt1.5-1.8b --dtype bf16 --seed 1 --out $s/bf16 --force \
  > "$out/synth.log" 2>&1
step rtn4 "$hq" quantize --model $s/bf16 --method rtn --bits 4 --group-size 128 --device cuda --out $s/rtn4 --force \
  > "$out/rtn4.log" 2>&1
step vram "$hq" eval --original $s/bf16 --quantized $s/rtn4 --testset "$data/synth.en-zh.tsv" --batch-size 16 \
  --max-new-tokens 64 --bootstrap 10 --device cuda --out "$out/vram" > "$out/vram.log" 2>&1
grep -A5 "^VRAM" "$out/vram.log"
tar czf "${OUT:-/tmp}/kernels.tgz" -C /tmp/logs kernels
echo "== summary"
printf '%s\n' "${summary[@]}"
