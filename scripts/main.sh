#!/usr/bin/env bash
# The main job on a fresh machine: set up (scripts/setup.sh), train a Point Transformer classifier
# on the built-in dataset, evaluate its best checkpoint, and render an attention picture of a test
# cloud. Everything lands in runs/builtin-<attention>/.
#
#   bash scripts/main.sh                 # vector attention (default)
#   ATTENTION=scalar bash scripts/main.sh
#
# A killed run continues where its last checkpoint left it when started again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate

attention=${ATTENTION:-vector}
run=runs/builtin-$attention
resume=()
[ -f "$run/last.pt" ] && resume=(--resume)

echo "[main] training pt-tiny-$attention on the built-in dataset -> $run"
pcattn train --dataset builtin --attention "$attention" --out "$run" "${resume[@]}"

echo "[main] evaluating $run/best.pt (3 votes)"
pcattn eval --checkpoint "$run/best.pt" --votes 3 --json "$run/eval_votes.json"

echo "[main] attention picture of test cloud 7 -> $run/attention.png"
pcattn visualize --checkpoint "$run/best.pt" --dataset builtin --split test --index 7 \
    --mode query --out "$run/attention.png" --ply "$run/attention.ply"

echo "[main] done: $run/{best.pt,metrics.jsonl,eval.json,curves.png,confusion.png,attention.png,attention.ply}"
