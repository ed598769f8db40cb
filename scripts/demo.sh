#!/usr/bin/env bash
# The main job, end to end on a fresh machine: build deps, the demo's model
# Qwen2.5-Coder-0.5B-Instruct (the tests' SmolLM2-135M comes with it) and the
# release build (scripts/setup.sh --model qwen2.5-coder-0.5b; native CPU kernels
# unless COTFORGE_NATIVE=0, see scripts/build.sh), then data/jobs/demo.toml — all three
# recipes on the committed seed samples — with dedup, SFT export, stats and
# an HTML report. Rerunning resumes (or, when done, just reprints the summary).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
JOB="${1:-data/jobs/demo.toml}"
start=$(date +%s)
scripts/setup.sh --model qwen2.5-coder-0.5b
echo "[demo] running $JOB" >&2
./target/release/cotforge run "$JOB"
out=$(sed -n 's/^out *= *"\(.*\)".*/\1/p' "$JOB" | head -n1)
cat <<MSG

[demo] done in $(( $(date +%s) - start ))s
  shards (chains + rejects, per recipe):  $out/shards/
  final deduplicated chains:              $out/final/chains.parquet
  SFT export (Hugging Face layout):       $out/export/   (README.md card, dataset_info.json)
  stats:                                  $out/final/stats.txt   (or: cotforge stats $out)
  HTML report:                            $out/final/report.html
  MCTS trees (inspect-tree):              $out/trees/
Load it:  python3 -c "import datasets; print(datasets.load_dataset('parquet', data_files='$out/export/data/*.parquet'))"
MSG
