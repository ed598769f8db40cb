#!/usr/bin/env bash
# Benchmarks (never run by the tests). Each prints a table of ratios against a
# baseline measured in the same run.
#
#   scripts/bench.sh engine   # cotforge vs llama.cpp's llama-batched-bench / llama-perplexity,
#                             # both a portable (GGML_NATIVE=OFF) and a native llama.cpp build
#   scripts/bench.sh search   # MCTS on 32 GSM8K questions: seeds/hour, KV reuse, decode share,
#                             # decode tok/s vs llama-batched-bench, accuracy per selection rule
#   scripts/bench.sh accuracy # the same on 50 GSM8K train questions (the accuracy study)
#   scripts/bench.sh http     # that MCTS over llama-server vs in-process: seeds/hour, ratio,
#                             # prompt tokens sent, server cache reuse, a naive client's floor
#   scripts/bench.sh store    # ingest + shard write of 1,000,000 synthetic rows
#   scripts/bench.sh dedup    # MinHash dedup of 1,000,000 synthetic chains
#
# Environment: THREADS (default 2), ROUNDS (default 3), OUT (default target/bench),
# NO_SCORE=1 (engine: decode only, no llama-perplexity comparison);
# cotforge is built as scripts/build.sh builds it (native unless COTFORGE_NATIVE=0).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WHAT="${1:-engine}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
OUT="${OUT:-$ROOT/target/bench}"
MODEL="${MODEL:-$ROOT/data/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
mkdir -p "$OUT"

log() { printf '[bench] %s\n' "$*" >&2; }

# llama.cpp's own tools (llama-batched-bench, llama-perplexity, llama-server),
# built once from the llama.cpp tree vendored in the llama-cpp-python sdist.
# shellcheck source=scripts/llama-tools.sh
. "$ROOT/scripts/llama-tools.sh"
# Default variant "auto": the CPU flags cotforge is built with (scripts/build.sh).
build_llama_tools() { llama_tools_build "${1:-auto}" || exit 1; }
TOOLS_BIN="$(llama_tools_bin auto)"

[ -f "$MODEL" ] || scripts/setup.sh
# shellcheck source=scripts/build.sh
. "$ROOT/scripts/build.sh"
cotforge_build
BIN="$ROOT/target/release/cotforge"

case "$WHAT" in
  engine)
    # Two llama.cpp baselines from the same source: portable (GGML_NATIVE=OFF,
    # what llama-cpp-sys-2 builds without target-cpu=native) and native.
    build_llama_tools portable
    build_llama_tools native
    PORTABLE_BIN="$(llama_tools_bin portable)"
    NATIVE_BIN="$(llama_tools_bin native)"
    "$BIN" bench engine --model "$MODEL" --threads "$THREADS" --rounds "$ROUNDS" \
      --batched-bench "$PORTABLE_BIN/llama-batched-bench" --perplexity "$PORTABLE_BIN/llama-perplexity" \
      --native-batched-bench "$NATIVE_BIN/llama-batched-bench" --native-perplexity "$NATIVE_BIN/llama-perplexity" \
      --llama-cpp-source "llama-cpp-python==$LCP_VERSION (vendor/llama.cpp)" \
      --cotforge-build "$COTFORGE_BUILD_CPU" ${NO_SCORE:+--no-score} --json "$OUT/engine.json"
    ;;
  search|accuracy)
    # Settings in benches/data/search.toml; n_parallel 8, THREADS threads.
    build_llama_tools
    if [ "$WHAT" = search ]; then SEEDS=tests/fixtures/gsm8k_32.jsonl; else SEEDS=benches/data/gsm8k_train_50.jsonl; fi
    "$BIN" bench search --model "$MODEL" --threads "$THREADS" --n-parallel 8 \
      --n-ctx "${N_CTX:-16384}" --seeds "$SEEDS" --config benches/data/search.toml \
      --out "$OUT/$WHAT" --batched-bench "$TOOLS_BIN/llama-batched-bench" --json "$OUT/$WHAT.json"
    ;;
  http)
    # The search of `bench search` over llama-server (same model, threads and
    # settings) against the in-process engine, plus a naive client's floor.
    build_llama_tools
    "$BIN" bench http --model "$MODEL" --llama-server "$TOOLS_BIN/llama-server" --threads "$THREADS" \
      --n-parallel 8 --n-ctx "${N_CTX:-16384}" --seeds "${SEEDS:-tests/fixtures/gsm8k_32.jsonl}" \
      --limit "${LIMIT:-16}" --config benches/data/search.toml --rounds "$ROUNDS" \
      ${VARIANTS:+--variants "$VARIANTS"} --json "$OUT/http.json"
    ;;
  store)
    cargo bench --bench store
    ;;
  dedup)
    cargo bench --bench dedup
    ;;
  *)
    echo "usage: scripts/bench.sh engine|search|accuracy|http|store|dedup" >&2; exit 2 ;;
esac
