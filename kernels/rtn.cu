// RTN on the GPU: see src/backend/cuda/rtn.rs (added with `quantize --device cuda`).
