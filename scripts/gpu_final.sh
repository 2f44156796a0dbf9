#!/usr/bin/env bash
# One device call: the changed GPU tests, the 7B-shape GPTQ benchmark against the PyTorch
# reference loop (REF_LAYERS layers, default 3), and the VRAM table on
# synth HY-MT shapes (issue 4): `eval --device cuda` of bf16 vs int8 vs int4 at batch 16 and
# 64 new tokens on a toy word-level test set (random weights: the outputs are noise, the memory
# is what is measured). Steps past DEADLINE seconds (default 560) are skipped. Logs and reports
# in $OUT/final.tgz.
#   usage: scripts/gpu_final.sh BINDIR DATADIR
set -uo pipefail
bindir=$1 data=$2 deadline=${DEADLINE:-560}
out=/tmp/logs/final; mkdir -p "$out"
export XDG_CACHE_HOME=/tmp/xdg
hq=$bindir/hy-quant
# shellcheck source=scripts/gpu_steps.sh
. "$(dirname "$0")/gpu_steps.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
step tests timeout 60 "$bindir/backend_ops" --ignored --test-threads=1 --nocapture --exact \
  gptq_linear_cuda copies_cuda hessian_half_cuda to_half_cuda gptq_solve_cuda > "$out/tests.log" 2>&1
grep -E "^test |test result|panicked" "$out/tests.log"
step gptq_backend timeout 30 "$bindir/gptq_backend" --ignored --test-threads=1 > "$out/gptq_backend.log" 2>&1
step bench7b env HYQ_BIN="$hq" timeout 330 scripts/bench_gptq_vs_reference.sh /tmp/bench hy-mt1.5-7b 128 2048 ${REF_LAYERS:-3} > "$out/bench-7b.log" 2>&1
cp /tmp/bench/gptq4-hy-mt1.5-7b/manifest.json "$out/manifest-7b.json" 2>/dev/null
grep -vE "^\[hy-quant\] (synth|write)|^layer " "$out/bench-7b.log" | tail -40
cp /tmp/bench/reference.json "$out/" 2>/dev/null
vram() {  # MODEL_DIR_BF16 INT4_DIR INT8_DIR LABEL
  "$hq" eval --original "$1" --quantized "$3" "$2" --testset "$data/synth.en-zh.tsv" --batch-size 16 \
    --max-new-tokens 64 --bootstrap 10 --device cuda --out "$out/vram-$4" > "$out/vram-$4.log" 2>&1
}
b=/tmp/bench
step rtn8-7b "$hq" quantize --model $b/synth-hy-mt1.5-7b --method rtn --bits 8 --group-size 128 --device cuda \
  --out $b/rtn8-7b --force > "$out/rtn8-7b.log" 2>&1
step vram-7b vram $b/synth-hy-mt1.5-7b $b/gptq4-hy-mt1.5-7b $b/rtn8-7b 7b
grep -A8 "^VRAM" "$out/vram-7b.log"
step synth-1.8b "$hq" synth --arch hunyuan-dense --preset hy-mt1.5-1.8b --dtype bf16 --seed 1 --out $b/s18 --force > /dev/null 2>&1
step rtn-1.8b bash -c "'$hq' quantize --model $b/s18 --method rtn --bits 4 --group-size 128 --device cuda --out $b/s18-rtn4 --force && '$hq' quantize --model $b/s18 --method rtn --bits 8 --group-size 128 --device cuda --out $b/s18-rtn8 --force" > "$out/rtn-1.8b.log" 2>&1
step vram-1.8b vram $b/s18 $b/s18-rtn4 $b/s18-rtn8 1.8b
grep -A8 "^VRAM" "$out/vram-1.8b.log"
tar czf "${OUT:-/tmp}/final.tgz" -C /tmp/logs final
echo "== summary"
printf '%s\n' "${summary[@]}"
