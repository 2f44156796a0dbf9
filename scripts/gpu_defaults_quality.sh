#!/usr/bin/env bash
# One device call after both test GGUFs were staged to /root/stage: the shipped GPTQ defaults
# (--act-order static-groups --clip-search, bundled corpus, seed 0, 128 x 2048 tokens, g128) on
# the real 0.5B and 1.5B models, int4 and int8, against RTN int4, evaluated on all of ddtp and
# debref and hsk 2,000 (scripts/gpu_models.sh does the work; reports in $OUT/*.tgz).
#   usage: scripts/gpu_defaults_quality.sh BINDIR DATADIR
set -uo pipefail
bindir=$1 data=$2
DEADLINE=${DEADLINE:-270} scripts/gpu_models.sh "$bindir" "$data" qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
  q05def 2000 "rtn4:--method rtn --bits 4" "g4:--method gptq --bits 4" "g8:--method gptq --bits 8"
DEADLINE=${DEADLINE:-270} scripts/gpu_models.sh "$bindir" "$data" qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
  q15def 2000 "g8:--method gptq --bits 8"
