#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what it needs (build
# deps, the default model, Python readers, headless Chromium), then runs every
# test once against one release build (the same build the main job uses).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[test] %s\n' "$*" >&2; }

# SmolLM2-135M for the real-model tests, and the demo job's Qwen2.5-Coder-0.5B
# (the test that loads every committed job file checks its model is there).
scripts/setup.sh --model qwen2.5-coder-0.5b

# Readers the export test loads the data with, and the browser the report test renders in.
if ! python3 -c "import pyarrow, polars, duckdb, datasets" 2>/dev/null; then
  log "installing Python readers (pyarrow, polars, duckdb, datasets)"
  python3 -m pip install --quiet --disable-pip-version-check pyarrow polars duckdb datasets
fi
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing chromium (headless report test)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    log "chromium missing and not root: install Debian's chromium package"; exit 1
  fi
fi

# Tests run several llama.cpp contexts at once (parallel test threads); OpenMP's
# default spin-waiting then starves them. Speed is measured by scripts/bench.sh, not here.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

cargo fmt --check
# One release build serves the tests, the benches and the main job.
# Benches are compiled (so they cannot rot) but never run here: speed lives in scripts/bench.sh.
cargo build --release --benches --quiet
cargo test --release --no-fail-fast "$@"
