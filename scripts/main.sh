#!/usr/bin/env bash
# The main job on a fresh machine: set up (scripts/setup.sh), train a Point Transformer classifier
# on the built-in dataset, evaluate its best checkpoint, and render an attention picture of a test
# cloud. Everything lands in runs/builtin-<attention>/.
#
#   bash scripts/main.sh                 # vector attention (default)
#   ATTENTION=scalar bash scripts/main.sh
#   TASK=partseg bash scripts/main.sh    # part segmentation of the built-in parts -> runs/builtin-parts-<attention>/
#   TASK=semseg bash scripts/main.sh     # scene segmentation of the built-in rooms -> runs/builtin-rooms-<attention>/
#
# A killed run continues where its last checkpoint left it when started again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate

attention=${ATTENTION:-vector}
task=${TASK:-classification}

if [ "$task" = partseg ]; then
    run=runs/builtin-parts-$attention
    resume=()
    [ -f "$run/last.pt" ] && resume=(--resume)
    echo "[main] training pt-seg-tiny-$attention on the built-in parts -> $run"
    pcattn train --task partseg --dataset builtin-parts --attention "$attention" --out "$run" "${resume[@]}"

    echo "[main] evaluating $run/best.pt with 3 votes (instance and class mIoU, per category)"
    pcattn eval --checkpoint "$run/best.pt" --votes 3 --json "$run/eval_votes.json"

    echo "[main] parts of test shapes 52 (a chair) and 4 (an airplane) -> $run/parts.png, $run/parts_airplane.png"
    pcattn visualize --checkpoint "$run/best.pt" --dataset builtin-parts --split test --index 52 \
        --mode parts --views 2 --size 320 --out "$run/parts.png" --ply "$run/parts.ply"
    pcattn visualize --checkpoint "$run/best.pt" --dataset builtin-parts --split test --index 4 \
        --mode parts --views 2 --size 320 --out "$run/parts_airplane.png"
    echo "[main] done: $run/{best.pt,metrics.jsonl,eval.json,eval_votes.json,curves.png,confusion.png,parts.png,parts_airplane.png,parts.ply}"
    exit 0
elif [ "$task" = semseg ]; then
    run=runs/builtin-rooms-$attention
    resume=()
    [ -f "$run/last.pt" ] && resume=(--resume)
    echo "[main] training pt-scene-tiny-$attention on the built-in rooms -> $run"
    # CPU-sized: rooms of 30-40k points, an 8 cm grid, crops of 4,096 points, colours and normals as features,
    # the rare classes weighed up (sqrt of the inverse share) and crops centred on their points more often
    # (class-balanced crops: without them a short run can miss the test rooms' one board, a plate 2 cm off
    # its wall); recompute=false: crops this small keep every attention pair in memory (~1.5x faster steps);
    # after each epoch a quick evaluation (2 grid fragments per test room, the other points taking their
    # voxel's scores)
    pcattn train --dataset builtin-rooms --attention "$attention" --rooms 16,4 --room-points 30000,40000 \
        --voxel-size 0.08 --num-points 4096 --batch-size 4 --room-repeats 8 --epochs 16 --lr 0.005 \
        --use-normals --class-weights sqrt --crop-centres sqrt --attention-option recompute=false \
        --eval-fragments 2 --out "$run" "${resume[@]}"

    # 4 votes: the room as it is and 3 copies turned about the vertical and mirrored, the scores summed
    echo "[main] evaluating $run/best.pt on every point of the whole test rooms, 4 votes (mIoU, mAcc, OA, per class)"
    pcattn eval --checkpoint "$run/best.pt" --votes 4 --json "$run/eval_full.json"

    echo "[main] predicted and true classes of test room 0 -> $run/room.png, $run/room.ply"
    pcattn visualize --checkpoint "$run/best.pt" --dataset builtin-rooms --index 0 --mode semseg \
        --size 360 --out "$run/room.png" --ply "$run/room.ply"
    echo "[main] done: $run/{best.pt,metrics.jsonl,eval.json,eval_full.json,curves.png,confusion.png,room.png,room.ply}"
    exit 0
elif [ "$task" != classification ]; then
    echo "[main] TASK must be classification (default), partseg or semseg, got '$task'" >&2
    exit 2
fi

run=runs/builtin-$attention
resume=()
[ -f "$run/last.pt" ] && resume=(--resume)

echo "[main] training pt-tiny-$attention on the built-in dataset -> $run"
pcattn train --dataset builtin --attention "$attention" --out "$run" "${resume[@]}"

echo "[main] evaluating $run/best.pt (3 votes)"
pcattn eval --checkpoint "$run/best.pt" --votes 3 --json "$run/eval_votes.json"

echo "[main] attention pictures of test cloud 7 -> $run/attention.png, $run/attention_received.png"
# query mode: the weights point 100 gives its neighbours, in the first layer and two stages deeper
pcattn visualize --checkpoint "$run/best.pt" --dataset builtin --split test --index 7 \
    --mode query --query 100 --layer 0 2 --views 2 --size 320 --out "$run/attention.png" --ply "$run/attention.ply"
# received mode: the total weight each point receives, in every stage
pcattn visualize --checkpoint "$run/best.pt" --dataset builtin --split test --index 7 \
    --mode received --layer 0 1 2 --views 2 --size 320 --out "$run/attention_received.png"

echo "[main] done: $run/{best.pt,metrics.jsonl,eval.json,eval_votes.json,curves.png,confusion.png,attention.png,attention_received.png,attention.ply}"
