#!/usr/bin/env bash
# GPTQ vs RTN on a real model: quantize, check GPTQ against the PyTorch reference on real
# layers, and measure translation-quality drift with our runner and metrics.
#   usage: scripts/gptq_quality.sh PHASE GGUF WORKDIR OUTDIR [args]
#     PHASE quantize CALIB SAMPLES SEQLEN : convert (once), RTN int4/int8 and GPTQ int4/int8
#                                           g128 (GPTQ int4 dumps layers 0, mid, last for the
#                                           reference check), then the reference check
#     PHASE eval LIMIT MODELS TESTSET...  : `hy-quant eval` of bf16 against MODELS
#                                           (comma-separated names under WORKDIR)
# Phases are separate so each fits one call on the GPU host. HYQ_BIN overrides the binary;
# PYTHON the interpreter for the reference check (needs torch, safetensors).
set -euo pipefail
bin=${HYQ_BIN:-target/release/hy-quant}
py=${PYTHON:-python3}
phase=$1 gguf=$2 work=$3 out=$4; shift 4
mkdir -p "$work" "$out"
case $phase in
quantize)
  calib=$1 samples=$2 seqlen=$3
  [ -f "$work/bf16/config.json" ] || "$bin" convert --from-gguf "$gguf" --dtype bf16 --out "$work/bf16" 2>&1 | tail -1
  layers=$(python3 -c "import json;print(json.load(open('$work/bf16/config.json'))['num_hidden_layers'])")
  for b in 4 8; do
    [ -f "$work/rtn$b/manifest.json" ] || "$bin" quantize --model "$work/bf16" --method rtn --bits $b --group-size 128 --out "$work/rtn$b" | tail -1
  done
  for b in 4 8; do
    dump=()
    [ $b = 4 ] && dump=(env HYQ_DUMP_LAYER_INPUTS="$work/dump:0,$((layers / 2)),$((layers - 1))")
    if [ ! -f "$work/gptq$b/manifest.json" ]; then
      /usr/bin/time -f "gptq$b: %e s wall, %M KB peak RSS" "${dump[@]}" "$bin" quantize --model "$work/bf16" --method gptq \
        --bits $b --group-size 128 --calib "$calib" --calib-samples "$samples" --calib-seqlen "$seqlen" \
        --out "$work/gptq$b" --resume 2>&1 | grep -v '^\[hy-quant\]' | tee "$out/gptq$b.log"
    fi
    cp "$work/gptq$b/manifest.json" "$out/gptq$b.manifest.json"
  done
  "$py" scripts/check_gptq_real_layers.py --dump "$work/dump" --quantized "$work/gptq4" | tee "$out/reference_check.txt"
  ;;
eval)
  limit=$1 models=$2; shift 2
  qs=()
  for m in ${models//,/ }; do qs+=("$work/$m"); done
  "$bin" eval --original "$work/bf16" --quantized "${qs[@]}" --testset "$@" --limit "$limit" --out "$out"
  ;;
*) echo "unknown phase $phase" >&2; exit 2 ;;
esac
