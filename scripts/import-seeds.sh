#!/usr/bin/env bash
# Import the four seed sets shipped in ../shared/data/seeds into seed Parquet
# (schemas/seeds.json). One command per set; see pipeline/store/import.rs for
# the field rules (GSM8K `#### N` extraction, self-instruct input joining).
#
#   scripts/import-seeds.sh [SRC_DIR] [OUT_DIR] [LIMIT]
#
# Defaults: SRC_DIR=../shared/data/seeds, OUT_DIR=data/seeds/full, no limit.
# The committed samples in data/seeds/ were made with OUT_DIR=data/seeds and
# LIMIT=32 (gsm8k) / 16 (the others): `scripts/import-seeds.sh "" data/seeds sample`.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-../shared/data/seeds}
[ -n "$SRC" ] || SRC=../shared/data/seeds
OUT=${2:-data/seeds/full}
MODE=${3:-full}
COTFORGE=${COTFORGE:-cargo run --quiet --release --no-default-features --}
lim() { if [ "$MODE" = sample ]; then echo "--limit $1"; fi; }
mkdir -p "$OUT"

$COTFORGE seeds import "$SRC/gsm8k_train.jsonl" --prompt-field question --answer-field answer \
  --source gsm8k --out "$OUT/gsm8k.parquet" $(lim 32)
$COTFORGE seeds import "$SRC/marco_o1_letter_count.json" --id-field id --prompt-field problem \
  --answer-field solution --source marco_o1_letter_count --out "$OUT/letter_count.parquet" $(lim 16)
$COTFORGE seeds import "$SRC/marco_o1_cot_demo.json" --prompt-field instruction \
  --response-field response --source marco_o1_cot_demo --out "$OUT/cot_demo.parquet" $(lim 16)
$COTFORGE seeds import "$SRC/self_instruct_seed_tasks.jsonl" --id-field id --prompt-field instruction \
  --input-field instances.0.input --meta-field name --meta-field is_classification \
  --source self_instruct --out "$OUT/self_instruct.parquet" $(lim 16)

# Licences travel with the data.
cp "$SRC/gsm8k.LICENSE" "$SRC/marco_o1.LICENSE" "$SRC/marco_o1.NOTICE" "$SRC/self_instruct.LICENSE" "$OUT/"
