#!/usr/bin/env bash
# Builds the release binary and the named integration-test binaries here and copies them,
# stripped, into stage/bin (git-ignored) for a device call (`carry: ["stage/bin"]`; the GPU
# host has no cargo). hy-quant + backend_ops + runner_fused come to about 40 MB of the 64 MiB
# a call may carry.
#   usage: scripts/stage_gpu_bins.sh [TEST ...]      (default: backend_ops runner_fused)
set -euo pipefail
cd "$(dirname "$0")/.."
tests=("$@"); [ ${#tests[@]} -gt 0 ] || tests=(backend_ops runner_fused)
cargo build --release --locked
args=(); for t in "${tests[@]}"; do args+=(--test "$t"); done
# The test binaries' paths, from cargo's JSON messages (the hash in the name changes).
mapfile -t paths < <(cargo test --release --locked --no-run "${args[@]}" --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"] + " " + m["executable"])')
rm -rf stage/bin; mkdir -p stage/bin
cp target/release/hy-quant stage/bin/
for p in "${paths[@]}"; do cp "${p#* }" "stage/bin/${p%% *}"; done
strip stage/bin/*
ls -la stage/bin; du -sh stage/bin
