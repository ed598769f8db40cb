#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what it needs (build
# deps, the models, Python readers, headless Chromium, Slurm), then runs every
# test once against one release build (the same build the main job uses).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[test] %s\n' "$*" >&2; }

# Build deps, SmolLM2-135M for the real-model tests and the demo job's
# Qwen2.5-Coder-0.5B (the test that loads every committed job file checks its
# model is there), and the release build (scripts/build.sh: native CPU kernels
# with a self-test and a portable fallback; COTFORGE_NATIVE=0 opts out).
scripts/setup.sh --model qwen2.5-coder-0.5b
# shellcheck source=scripts/build.sh
. "$ROOT/scripts/build.sh"

# Readers the export test loads the data with, and the browser the report test renders in.
if ! python3 -c "import pyarrow, polars, duckdb, datasets" 2>/dev/null; then
  log "installing Python readers (pyarrow, polars, duckdb, datasets)"
  python3 -m pip install --quiet --disable-pip-version-check pyarrow polars duckdb datasets
fi
# TRL's data helpers and the GGUF tokenizer the export tests render every row with
# (tests/py/check_trl.py). No torch: trl without its dependencies (they pull torch;
# trl.data_utils does not need it), and transformers' GGUF tokenizer conversion.
if ! python3 -c "import transformers, gguf, trl.data_utils" 2>/dev/null; then
  log "installing transformers, gguf and trl (no torch)"
  python3 -m pip install --quiet --disable-pip-version-check "transformers==5.24.0" "gguf==0.19.0"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps "trl==1.16.0"
  python3 -c "import trl.data_utils" || { log "trl.data_utils does not import without torch"; exit 1; }
fi
apt_updated=
apt_install() { # apt_install "what needs them" PACKAGE...
  local why=$1; shift
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    log "$why needs Debian's $* (missing, and not root with apt-get): install them"; exit 1
  fi
  log "installing $* ($why)"
  [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
command -v chromium >/dev/null || apt_install "the headless report test" chromium
# tests/slurm_nightly.rs starts its own munged, slurmctld and slurmd (one local node, as
# root); COTFORGE_SKIP_SLURM=1 skips it and this install.
if [ "${COTFORGE_SKIP_SLURM:-}" != 1 ]; then
  for tool in munged mungekey slurmctld slurmd sbatch; do
    if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null; then
      apt_install "the Slurm nightly test" slurm-wlm munge
      break
    fi
  done
fi

# Tests run several llama.cpp contexts at once (parallel test threads); OpenMP's
# default spin-waiting then starves them. Speed is measured by scripts/bench.sh, not here.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

# llama-server for the HTTP engine tests: built once from the llama-cpp-python
# sdist's llama.cpp (about 5-9 minutes on 2 cores), cached under target/, with
# cotforge's own CPU flags (variant auto), so both engines run the same kernels.
log "llama-server (scripts/llama-tools.sh)"
scripts/llama-tools.sh >/dev/null

cargo fmt --check
# One release build serves the tests, the benches and the main job: the same
# RUSTFLAGS as setup.sh's build (cotforge_build_env), so nothing is rebuilt.
# Benches are compiled (so they cannot rot) but never run here: speed lives in scripts/bench.sh.
cotforge_build --benches
cargo test --release --no-fail-fast "$@"
