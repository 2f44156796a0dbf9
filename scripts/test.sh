#!/usr/bin/env bash
# The project's test command (README "Tests"; .ci/run calls exactly this).
# Unit + integration tests on the CPU. GPU tests are #[ignore]d with a reason and run on the
# GPU machine (see docs/perf.md).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked
