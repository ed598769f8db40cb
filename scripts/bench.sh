#!/usr/bin/env bash
# Benchmarks (never run by the tests). Each prints a table of ratios against a
# baseline measured in the same run.
#
#   scripts/bench.sh engine   # cotforge vs llama.cpp's llama-batched-bench / llama-perplexity
#   scripts/bench.sh search   # MCTS on 32 GSM8K questions: seeds/hour, KV reuse, decode share,
#                             # decode tok/s vs llama-batched-bench, accuracy per selection rule
#   scripts/bench.sh accuracy # the same on 50 GSM8K train questions (the accuracy study)
#   scripts/bench.sh store    # ingest + shard write of 1,000,000 synthetic rows
#   scripts/bench.sh dedup    # MinHash dedup of 1,000,000 synthetic chains
#   scripts/bench.sh decontam # 13-gram decontamination of 1,000,000 chains against 10,000 benchmark items
#
# Environment: THREADS (default 2), ROUNDS (default 3), OUT (default target/bench).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WHAT="${1:-engine}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
OUT="${OUT:-$ROOT/target/bench}"
MODEL="${MODEL:-$ROOT/data/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
TOOLS="$ROOT/target/bench-tools"
LCP_VERSION="0.3.36"
mkdir -p "$OUT"

log() { printf '[bench] %s\n' "$*" >&2; }

# llama.cpp's own tools, built from the llama.cpp tree vendored in the
# llama-cpp-python sdist (the llama-cpp-sys-2 crate ships no tool sources).
# Same CPU flags as the crate's build (GGML_NATIVE=OFF: AVX2/FMA/F16C), so both
# sides run the same kernels; a native build may also pick up AMX paths that
# crash on VMs which advertise AMX without supporting it.
TOOLS_FLAGS="GGML_NATIVE=OFF"
build_llama_tools() {
  if [ -x "$TOOLS/bin/llama-batched-bench" ] && [ -x "$TOOLS/bin/llama-perplexity" ] \
     && [ "$(cat "$TOOLS/bin/.flags" 2>/dev/null)" = "$TOOLS_FLAGS" ]; then return; fi
  rm -rf "$TOOLS/build" "$TOOLS/bin"
  log "building llama-batched-bench and llama-perplexity from llama-cpp-python==$LCP_VERSION (cached in $TOOLS)"
  mkdir -p "$TOOLS/src"
  if [ ! -d "$TOOLS/src/llama.cpp" ]; then
    python3 -m pip download --quiet --no-deps --no-binary :all: -d "$TOOLS/src" "llama-cpp-python==$LCP_VERSION"
    tar -xzf "$TOOLS/src/llama_cpp_python-$LCP_VERSION.tar.gz" -C "$TOOLS/src"
    mv "$TOOLS/src/llama_cpp_python-$LCP_VERSION/vendor/llama.cpp" "$TOOLS/src/llama.cpp"
    rm -rf "$TOOLS/src/llama_cpp_python-$LCP_VERSION"
  fi
  cmake -S "$TOOLS/src/llama.cpp" -B "$TOOLS/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
  cmake --build "$TOOLS/build" --target llama-batched-bench llama-perplexity -j "$(nproc)" >"$TOOLS/build.log" 2>&1 || { tail -30 "$TOOLS/build.log"; exit 1; }
  mkdir -p "$TOOLS/bin"
  cp "$TOOLS/build/bin/llama-batched-bench" "$TOOLS/build/bin/llama-perplexity" "$TOOLS/bin/"
  echo "$TOOLS_FLAGS" > "$TOOLS/bin/.flags"
}

[ -f "$MODEL" ] || scripts/setup.sh
cargo build --release --quiet
BIN="$ROOT/target/release/cotforge"

case "$WHAT" in
  engine)
    build_llama_tools
    "$BIN" bench engine --model "$MODEL" --threads "$THREADS" --rounds "$ROUNDS" \
      --batched-bench "$TOOLS/bin/llama-batched-bench" --perplexity "$TOOLS/bin/llama-perplexity" \
      --llama-cpp-source "llama-cpp-python==$LCP_VERSION (vendor/llama.cpp)" \
      --json "$OUT/engine.json"
    ;;
  search|accuracy)
    # Settings in benches/data/search.toml; n_parallel 8, THREADS threads.
    build_llama_tools
    if [ "$WHAT" = search ]; then SEEDS=tests/fixtures/gsm8k_32.jsonl; else SEEDS=benches/data/gsm8k_train_50.jsonl; fi
    "$BIN" bench search --model "$MODEL" --threads "$THREADS" --n-parallel 8 \
      --n-ctx "${N_CTX:-16384}" --seeds "$SEEDS" --config benches/data/search.toml \
      --out "$OUT/$WHAT" --batched-bench "$TOOLS/bin/llama-batched-bench" --json "$OUT/$WHAT.json"
    ;;
  store)
    cargo bench --bench store
    ;;
  dedup)
    cargo bench --bench dedup
    ;;
  decontam)
    cargo bench --bench decontam
    ;;
  *)
    echo "usage: scripts/bench.sh engine|search|accuracy|store|dedup|decontam" >&2; exit 2 ;;
esac
