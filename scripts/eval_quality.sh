#!/usr/bin/env bash
# Quality drift of RTN int8/int4 on a real model, measured with our own runner and metrics.
#   usage: scripts/eval_quality.sh GGUF WORKDIR OUTDIR LIMIT TESTSET...
# Converts the GGUF (once), quantizes RTN int8 g128 and int4 g128 (once), then runs
# `hy-quant eval` on the test sets (first LIMIT pairs each) and writes eval.{json,md} and the
# hypotheses to OUTDIR. HYQ_BIN overrides the binary (default target/release/hy-quant).
set -euo pipefail
bin=${HYQ_BIN:-target/release/hy-quant}
gguf=$1 work=$2 out=$3 limit=$4; shift 4
mkdir -p "$work" "$out"
[ -f "$work/bf16/config.json" ] || "$bin" convert --from-gguf "$gguf" --dtype bf16 --out "$work/bf16"
for b in 8 4; do
  [ -f "$work/rtn$b/manifest.json" ] || "$bin" quantize --model "$work/bf16" --method rtn --bits $b --group-size 128 --out "$work/rtn$b"
done
"$bin" eval --original "$work/bf16" --quantized "$work/rtn8" "$work/rtn4" --testset "$@" --limit "$limit" --out "$out"
