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
#   scripts/bench.sh quality  # what the search ships vs greedy CoT and best-of-N at equal tokens
#                             # (benches/data/quality.toml; 64 GSM8K + 32 letter-count questions,
#                             # Qwen2.5-Coder-0.5B; resumes a partial run: rerun the same command)
#   scripts/bench.sh store    # ingest + shard write of 1,000,000 synthetic rows
#   scripts/bench.sh dedup    # MinHash dedup of 1,000,000 synthetic chains
#   scripts/bench.sh decontam # 13-gram decontamination of 1,000,000 chains against 10,000 benchmark items
#
# Environment: THREADS (default 2), ROUNDS (default 3), OUT (default target/bench),
# MODEL (default SmolLM2-135M; quality: Qwen2.5-Coder-0.5B), ARMS (quality: a subset, comma-separated),
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
# NO_SCORE=1 turns scoring off; unset, empty or 0 keeps it.
case "${NO_SCORE:-0}" in 0 | "") NO_SCORE="" ;; *) NO_SCORE=1 ;; esac
mkdir -p "$OUT"

log() { printf '[bench] %s\n' "$*" >&2; }

# llama.cpp's own tools (llama-batched-bench, llama-perplexity, llama-server),
# built once from the llama.cpp tree vendored in the llama-cpp-python sdist.
# shellcheck source=scripts/llama-tools.sh
. "$ROOT/scripts/llama-tools.sh"
# Default variant "auto": the CPU flags cotforge is built with (scripts/build.sh).
build_llama_tools() { llama_tools_build "${1:-auto}" || exit 1; }
TOOLS_BIN="$(llama_tools_bin auto)"

QWEN="$ROOT/data/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
if [ "$WHAT" = quality ]; then MODEL="${MODEL_QUALITY:-$QWEN}"; fi
if [ ! -f "$MODEL" ]; then
  if [ "$MODEL" = "$QWEN" ]; then scripts/setup.sh --model qwen2.5-coder-0.5b; else scripts/setup.sh; fi
fi
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
  quality)
    # Per-arm records land in $OUT/quality/<arm>/<set>.jsonl as each chunk of
    # seeds finishes; a rerun keeps them and runs only what is missing.
    build_llama_tools
    "$BIN" bench quality --model "$MODEL" --threads "$THREADS" --n-parallel 16 --n-ctx "${N_CTX:-16384}" \
      --config benches/data/quality.toml \
      --seeds gsm8k=benches/data/quality_gsm8k_64.parquet \
      --seeds letters=benches/data/quality_letter_count_32.parquet \
      ${ARMS:+--arms "$ARMS"} --batched-bench "$TOOLS_BIN/llama-batched-bench" --out "$OUT/quality"
    ;;
  quality-data)
    # How benches/data/quality_* and calib_* were cut from ../shared/data/seeds:
    # fixed slices (GSM8K train lines 1001-1064 reported, 2001-2032 calibration;
    # letter-count problems 100-131 reported, 200-215 calibration), imported with
    # `cotforge seeds import`.
    SRC="${SRC:-$ROOT/../shared/data/seeds}"
    T="$(mktemp -d)"
    sed -n '1001,1064p' "$SRC/gsm8k_train.jsonl" > "$T/g_rep.jsonl"
    sed -n '2001,2032p' "$SRC/gsm8k_train.jsonl" > "$T/g_cal.jsonl"
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); json.dump(d[100:132], open(sys.argv[2],'w')); json.dump(d[200:216], open(sys.argv[3],'w'))" \
      "$SRC/marco_o1_letter_count.json" "$T/l_rep.json" "$T/l_cal.json"
    g() { "$BIN" seeds import "$1" --prompt-field question --answer-field answer --source gsm8k --out "$2"; }
    l() { "$BIN" seeds import "$1" --id-field id --prompt-field problem --answer-field solution --source marco_o1_letter_count --out "$2"; }
    g "$T/g_rep.jsonl" benches/data/quality_gsm8k_64.parquet
    g "$T/g_cal.jsonl" benches/data/calib_gsm8k_32.parquet
    l "$T/l_rep.json" benches/data/quality_letter_count_32.parquet
    l "$T/l_cal.json" benches/data/calib_letter_count_16.parquet
    rm -rf "$T"
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
    echo "usage: scripts/bench.sh engine|search|accuracy|http|quality|quality-data|store|dedup|decontam" >&2; exit 2 ;;
esac
