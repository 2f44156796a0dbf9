#!/usr/bin/env bash
# End-to-end check of `convert --from-gguf` on the real Qwen2.5-Coder-0.5B GGUF and on a fixture
# with every supported block type, against gguf-py (dequantization) and transformers (tokenizer).
#   usage: scripts/check_gguf.sh            (needs: pip install gguf numpy transformers tokenizers)
# Models go to $HY_QUANT_TEST_MODELS (default <repo>/models).
set -euo pipefail
cd "$(dirname "$0")/.."
models=${HY_QUANT_TEST_MODELS:-$PWD/models}
bash /work/shared/scripts/fetch-test-models.sh "$models" 0.5b
export HY_QUANT_TEST_MODELS=$models
gguf=$models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
for dtype in bf16 f16; do
  HY_QUANT_GGUF_DTYPE=$dtype cargo test --release --test gguf_convert real_qwen2_5_coder_0_5b -- --ignored --nocapture
  python3 scripts/check_gguf_dequant.py "$gguf" "target/gguf-real/qwen2.5-coder-0.5b-$dtype"
done
python3 scripts/check_gguf_tokenizer.py "$gguf" target/gguf-real/qwen2.5-coder-0.5b-bf16 /work/shared/data/*.tsv
cargo test --test gguf_convert write_all_types_fixture -- --ignored
for arch in qwen2 llama; do for dtype in f16 bf16; do
  python3 scripts/check_gguf_dequant.py "target/gguf-fixture/all-types-$arch.gguf" "target/gguf-fixture/all-types-$arch-$dtype"
done; done
