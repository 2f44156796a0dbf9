#!/usr/bin/env bash
# The bundled example, end to end: synthesize a tiny HY-MT-shaped checkpoint, quantize it to
# GPTQ-format int4 g128 with RTN and with calibrated GPTQ (bundled corpus, small budget),
# verify the outputs' hashes, and inspect them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
bin=target/release/hy-quant
work=${1:-target/example}
mkdir -p "$work"
$bin synth --arch hunyuan-dense --preset tiny --dtype bf16 --seed 0 --out "$work/tiny-bf16" --force
$bin quantize --model "$work/tiny-bf16" --method rtn --bits 4 --group-size 128 --out "$work/tiny-int4"
$bin verify "$work/tiny-int4"
$bin inspect "$work/tiny-int4"
$bin quantize --model "$work/tiny-bf16" --method gptq --bits 4 --group-size 128 \
  --calib-samples 16 --calib-seqlen 256 --out "$work/tiny-gptq4"
$bin verify "$work/tiny-gptq4"
$bin inspect "$work/tiny-gptq4"
