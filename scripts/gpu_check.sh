#!/usr/bin/env bash
# Checks pcattn on a machine with one CUDA GPU, in a few minutes, and prints one summary table:
#   1. the tests marked `cuda` (layers and models on CUDA equal to the CPU over several chunks, the
#      recomputing backward with dropout in the positional encoding equal to plain autograd, fp16/bf16
#      against float32 and plain autograd, AMP training steps of every named model against float32,
#      kNN/FPS on the device, a GPU checkpoint loading on the CPU and back);
#   2. training throughput of pt-vector at ModelNet40 size (1024 points, batch 32, AMP fp16), samples/s;
#   3. a short training on the built-in data at 1024 points (samples/s and test OA after 2 epochs), and
#      of the small part segmenter on the built-in parts (samples/s and instance mIoU after 2 epochs);
#   4. `pcattn bench --device cuda --quick` (our layer against PyG's PointTransformerConv on the GPU).
# Without CUDA the cuda tests skip with their reason and the script says so. Uses the Python on PATH
# (activate your environment first); installs pcattn with --no-deps when it is not importable.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${GPU_CHECK_OUT:-runs/gpu-check}
mkdir -p "$OUT"
$PY -c "import pcattn" 2>/dev/null || $PY -m pip install -q --no-deps -e . || exit 1

if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "[gpu_check] no CUDA GPU on this machine: the cuda tests skip (reason below); nothing else to run"
    $PY -m pytest -q -m cuda -rs tests/test_cuda.py
    exit 0
fi
$PY -c "import torch; print('[gpu_check]', torch.cuda.get_device_name(0), 'torch', torch.__version__)"

echo "[gpu_check] 1/4 tests marked cuda"
$PY -m pytest -q -m cuda -rs tests/test_cuda.py 2>&1 | tee "$OUT/tests.txt"
tests_status=${PIPESTATUS[0]}

echo "[gpu_check] 2/4 pt-vector training throughput (1024 points, batch 32, AMP fp16)"
$PY - "$OUT/throughput.json" <<'PYEOF'
import json, sys, time
import torch, torch.nn.functional as F
from pcattn.models import create_model
torch.manual_seed(0)
device = torch.device("cuda")
rows = {}
for name in ("pt-vector", "pt-scalar"):
    model = create_model(name, num_classes=40).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    pos = torch.randn(32, 1024, 3, device=device)
    labels = torch.randint(0, 40, (32,), device=device)
    def step():
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(model(None, pos), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, steps = time.perf_counter(), 30
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    rows[name] = {"samples_per_s": round(32 * steps / seconds, 1),
                  "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    print(f"  {name}: {rows[name]['samples_per_s']} samples/s, peak {rows[name]['peak_gib']} GiB")
json.dump(rows, open(sys.argv[1], "w"))
PYEOF
throughput_status=$?

echo "[gpu_check] 3/4 short training on the built-in data (1024 points, 2 epochs, fp16)"
rm -rf "$OUT/train"
$PY -m pcattn train --dataset builtin --device cuda --precision fp16 --num-points 1024 --epochs 2 \
    --batch-size 32 --no-plots --no-progress --out "$OUT/train" 2>&1 | tail -n 4
train_status=${PIPESTATUS[0]}
rm -rf "$OUT/partseg"
$PY -m pcattn train --task partseg --dataset builtin-parts --device cuda --precision fp16 --epochs 2 \
    --no-plots --no-progress --out "$OUT/partseg" 2>&1 | tail -n 4
partseg_status=${PIPESTATUS[0]}
[ "$train_status" = 0 ] && train_status=$partseg_status

echo "[gpu_check] 4/4 pcattn bench --device cuda --quick"
$PY -m pcattn bench --device cuda --quick --out "$OUT/bench.json" --markdown "$OUT/bench.md" 2>&1 | tail -n 30
bench_status=${PIPESTATUS[0]}

$PY - "$OUT" "$tests_status" "$throughput_status" "$train_status" "$bench_status" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
status = dict(zip(("tests", "throughput", "train", "bench"), map(int, sys.argv[2:])))
def ok(key):
    return "ok" if status[key] == 0 else f"FAILED (exit {status[key]})"
tests = (out / "tests.txt").read_text().strip().splitlines()
rows = [("cuda tests", ok("tests"), tests[-1] if tests else "")]
if (out / "throughput.json").exists():
    for name, row in json.loads((out / "throughput.json").read_text()).items():
        rows.append((f"{name} train step", ok("throughput"),
                     f"{row['samples_per_s']} samples/s, peak {row['peak_gib']} GiB (1024 pts, batch 32, fp16)"))
metrics = out / "train" / "metrics.jsonl"
if metrics.exists():
    last = json.loads(metrics.read_text().splitlines()[-1])
    rows.append(("built-in training", ok("train"),
                 f"{last.get('samples_per_s', '?')} samples/s, test OA {last.get('test_oa', float('nan')):.3f} after epoch {last['epoch']}"))
else:
    rows.append(("built-in training", ok("train"), "no metrics written"))
metrics = out / "partseg" / "metrics.jsonl"
if metrics.exists():
    last = json.loads(metrics.read_text().splitlines()[-1])
    rows.append(("built-in part segmentation", ok("train"),
                 f"{last.get('samples_per_s', '?')} samples/s, instance mIoU "
                 f"{last.get('test_instance_miou', float('nan')):.3f} after epoch {last['epoch']}"))
rows.append(("bench --device cuda --quick", ok("bench"), f"table in {out / 'bench.md'}"))
width = max(len(r[0]) for r in rows)
print("\n[gpu_check] summary")
for name, state, detail in rows:
    print(f"  {name:<{width}}  {state:<18} {detail}")
sys.exit(0 if all(v == 0 for v in status.values()) else 1)
PYEOF
