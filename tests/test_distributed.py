"""Training and evaluation under ``torchrun`` (DistributedDataParallel, gloo, 2 processes x 1 thread on
the CPU) on tiny data: the run completes, its checkpoint evaluates to the same metrics in 1 and 2
processes, each rank sees its half of the one-process batches and the first step's gradients and
SyncBatchNorm statistics equal one process's,
a killed job resumes with 2 processes and with 1, and the built-in dataset is generated once when
two processes ask for it together."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ddp_recording
from conftest import TINY_BUILTIN
from pcattn.cli import main
from pcattn.engine import evaluate_checkpoint, load_checkpoint
from pcattn.engine.distributed import GlobalBatchSampler, ShardedBatches
from pcattn.engine.evaluation import _skip_votes, vote_augment

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_command(nproc: int, *args: str, script=None):
    """``torchrun --nproc_per_node nproc -m pcattn args`` (or ``script args``)."""
    target = [str(script)] if script else ["-m", "pcattn"]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), *target, *map(str, args)]


def torchrun(nproc: int, *args: str, script=None, timeout: float = 120) -> str:
    done = subprocess.run(torchrun_command(nproc, *args, script=script), env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def train_args(data_root, out, epochs=2):
    return ["train", "--dataset", "modelnet10", "--format", "folder", "--data-root", data_root, "--num-points", 64,
            "--batch-size", 8, "--epochs", epochs, "--lr", 3e-3, "--no-augment", "--threads", 1, "--no-progress",
            "--no-plots", "--out", out]


def metric_rows(out: Path):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# As scripts/train_cls.py, without dropout, recording its steps (see ddp_recording.install).
RECORDING_TRAIN = ("import sys\n"
                   f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
                   "import ddp_recording\n"
                   "from pcattn.cli import main\n"
                   "ddp_recording.install(sys.argv[1])\n"
                   "sys.exit(main(['train', *sys.argv[2:]]))\n")


@pytest.fixture(scope="module")
def two_process_run(tiny_modelnet10_root, tmp_path_factory):
    """A 2-process run (SyncBatchNorm, no dropout) and the same run in one process, both recorded:
    ``(two-process run folder, what it printed, {"two": [rank 0's steps, rank 1's], "one": [steps]})``."""
    folder = tmp_path_factory.mktemp("ddp")
    script = folder / "train_recording.py"  # as scripts/train_cls.py, without dropout, recording its steps
    script.write_text(RECORDING_TRAIN)
    records = {"two": folder / "record-two", "one": folder / "record-one"}
    for record in records.values():
        record.mkdir()
    out = folder / "two"
    printed = torchrun(2, records["two"], *train_args(tiny_modelnet10_root, out)[1:], "--sync-bn", script=script)
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:  # the one-process run here: no second start-up of torch
        ddp_recording.install(str(records["one"]), patch.setattr)
        assert main(["train", *map(str, train_args(tiny_modelnet10_root, folder / "one")[1:])]) == 0
    torch.set_num_threads(threads)
    steps = {"two": [torch.load(records["two"] / f"rank{rank}.pt") for rank in range(2)],
             "one": torch.load(records["one"] / "rank0.pt")}
    return out, printed, steps


def test_two_processes_train_with_sync_bn(two_process_run):
    out, printed, _ = two_process_run
    assert "2 processes (DistributedDataParallel, global batch 8" in printed
    assert int(re.search(r"(\d+) SyncBatchNorm layers", printed).group(1)) > 0
    assert printed.count("epoch   1/2") == 1  # only rank 0 prints
    assert (out / "best.pt").is_file() and (out / "eval.json").is_file()
    assert not list(out.glob(".*.tmp"))
    assert [row["epoch"] for row in metric_rows(out)] == [1, 2]


def test_each_rank_sees_its_half_of_every_one_process_batch(two_process_run):
    """The same global batches in the same order: rank r's batch k is half r of the one-process batch k."""
    _, _, steps = two_process_run
    one, (rank0, rank1) = steps["one"], steps["two"]
    assert len(one) == len(rank0) == len(rank1) == 40 // 8
    for k, whole in enumerate(one):
        assert torch.equal(torch.cat([rank0[k]["target"], rank1[k]["target"]]), whole["target"]), k
        for i, tensor in enumerate(whole["inputs"]):
            assert torch.equal(torch.cat([rank0[k]["inputs"][i], rank1[k]["inputs"][i]]), tensor), (k, i)


def test_first_step_gradients_and_batchnorm_statistics_equal_one_process(two_process_run):
    """The first step (before any update) must equal one process's to float rounding: the loss (the mean of
    the ranks' losses), the all-reduced gradients and SyncBatchNorm's running statistics (those of the
    global batch). Later steps are not compared: some gradients are zero in exact arithmetic (the
    mapping's last bias, which the softmax over neighbours cancels; the value bias, which the next
    BatchNorm cancels; a stage whose clouds have one point) and hold only rounding noise, which depends
    on the batch split, the CPU's kernels and the thread count; AdamW turns that noise into full-size
    steps of either sign, so from the second step on a loss curve measures rounding, not the
    synchronisation (measured here: 1 and 2 threads in one process already differ by 4% at epoch 2)."""
    _, _, steps = two_process_run
    one, (rank0, rank1) = steps["one"][0], [rank[0] for rank in steps["two"]]
    assert float(rank0["loss"] + rank1["loss"]) / 2 == pytest.approx(float(one["loss"]), rel=1e-5)
    assert set(rank0["grads"]) == set(one["grads"]) and len(one["grads"]) > 10
    # Measured: at most 1e-4 of a parameter's own gradient, and 1e-7 of the whole gradient's norm for the
    # noise-only gradients; without SyncBatchNorm's all-reduce the gradients differ by 10% or more.
    scale = float(torch.cat([grad.flatten() for grad in one["grads"].values()]).norm())
    for name, grad in one["grads"].items():
        for rank in (rank0, rank1):  # DDP leaves every rank the same averaged gradient
            error = float((rank["grads"][name] - grad).norm())
            assert error <= 1e-3 * float(grad.norm()) + 1e-6 * scale, \
                f"gradient of {name}: error {error:.2e} against one process (its norm {float(grad.norm()):.2e})"
    statistics = [name for name in one["buffers"] if name.endswith(("running_mean", "running_var"))]
    assert statistics, "the model has no BatchNorm"
    for name in statistics:
        for rank in (rank0, rank1):
            assert torch.allclose(rank["buffers"][name], one["buffers"][name], rtol=1e-5, atol=1e-6), \
                f"{name}: SyncBatchNorm's statistics differ from the one-process global batch's"


def test_checkpoint_evaluates_the_same_in_one_and_two_processes(two_process_run, tmp_path):
    out, _, _ = two_process_run
    result_path = tmp_path / "eval2.json"
    torchrun(2, "eval", "--checkpoint", out / "best.pt", "--votes", 2, "--json", result_path, "--no-progress")
    two = json.loads(result_path.read_text())
    one = evaluate_checkpoint(out / "best.pt", votes=2, progress=False)
    assert two["samples"] == one["samples"] == 20  # every test shape once: no padding, none left out
    assert two["confusion"] == one["confusion"]
    assert (two["oa"], two["macc"]) == (one["oa"], one["macc"])
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)


def kill_job(job: subprocess.Popen) -> None:
    """SIGKILL the ranks (torchrun's children, each in its own session) and torchrun itself."""
    ranks = [int(name) for name in os.listdir("/proc") if name.isdigit() and _parent(int(name)) == job.pid]
    for pid in ranks + [job.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    job.wait()


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_killed_job_resumes_with_one_and_with_two_processes(tiny_modelnet10_root, tmp_path):
    out = tmp_path / "run"
    job = subprocess.Popen(torchrun_command(2, *train_args(tiny_modelnet10_root, out, epochs=4)), env=ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        kill_job(job)
    killed_at = int(load_checkpoint(out / "last.pt")["epoch"])
    assert killed_at < 4, "the job finished before it could be killed"
    # 2 processes -> 1 process (one more epoch) -> 2 processes (to the end)
    assert main(["train", "--out", str(out), "--resume", "--epochs", str(killed_at + 1), "--no-progress"]) == 0
    if killed_at + 1 < 4:
        torchrun(2, "train", "--out", out, "--resume", "--epochs", 4, "--no-progress")
    assert [row["epoch"] for row in metric_rows(out)] == [1, 2, 3, 4]
    assert int(load_checkpoint(out / "last.pt")["epoch"]) == 4
    assert json.loads((out / "eval.json").read_text())["samples"] == 20


def test_two_processes_generating_the_builtin_dataset_leave_one_valid_copy(tmp_path):
    root, go = tmp_path / "data" / "builtin_shapes", tmp_path / "go"
    script = (
        "import json, os, sys, time\n"
        "import pcattn.data.builtin as builtin\n"
        "generate = builtin.generate_builtin_shapes\n"
        "def counted(*args, **kwargs):\n"
        "    print('GENERATED', flush=True)\n"
        "    return generate(*args, **kwargs)\n"
        "builtin.generate_builtin_shapes = counted\n"
        "print('ready', flush=True)\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.005)\n"
        f"data = builtin.BuiltinShapes({str(root)!r}, split='test', num_points=64, **{TINY_BUILTIN!r})\n"
        "print(json.dumps([len(data), float(data[0]['pos'].sum())]))\n")
    ranks = [subprocess.Popen([sys.executable, "-c", script], env=ENV, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    for rank in ranks:
        assert rank.stdout.readline().strip() == "ready"
    go.touch()
    outputs = [rank.communicate(timeout=60)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0]
    assert sum(output.count("GENERATED") for output in outputs) == 1, outputs
    assert len({output.strip().splitlines()[-1] for output in outputs}) == 1  # both read the same data
    assert sorted(p.name for p in root.parent.iterdir() if not p.name.endswith(".lock")) == ["builtin_shapes"]
    assert json.loads((root / "builtin_info.json").read_text())["test_per_class"] == TINY_BUILTIN["test_per_class"]


def test_global_batches_are_the_one_process_batches():
    for length in (37, 40):
        batch, epochs = 8, 3
        loader = torch.utils.data.DataLoader(range(length), batch_size=batch, shuffle=True, drop_last=True,
                                             generator=torch.Generator().manual_seed(3))
        one = [batch.tolist() for _ in range(epochs) for batch in loader]  # the same generator, epoch after epoch
        for world in (1, 2, 4):
            per_rank = batch // world
            shares = []
            for rank in range(world):
                generator = torch.Generator().manual_seed(3)
                sampler = GlobalBatchSampler(length, batch, rank, world, generator)
                rank_loader = torch.utils.data.DataLoader(range(length), sampler=sampler, batch_size=per_rank,
                                                          drop_last=True, generator=generator)
                shares.append([i for _ in range(epochs) for batch_ in rank_loader for i in batch_.tolist()])
            got = [sum((share[step * per_rank:(step + 1) * per_rank] for share in shares), [])
                   for step in range(len(one))]
            assert got == one
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        GlobalBatchSampler(length, batch, 0, 3, torch.Generator())


def test_sharded_test_batches_cover_every_shape_once_and_keep_votes_in_step():
    length, batch, world = 21, 4, 2
    shards = [ShardedBatches(length, batch, rank, world) for rank in range(world)]
    assert sorted(i for shard in shards for b in shard for i in b) == list(range(length))
    pos = torch.randn(length, 5, 3)
    reference = torch.Generator().manual_seed(0)
    expected = [vote_augment(pos[b], None, 1, reference)[0] for b in torch.arange(length).split(batch)]
    for rank, shard in enumerate(shards):
        generator = torch.Generator().manual_seed(0)
        for k, indices in enumerate(shard):
            for size in shard.skipped[k]:
                _skip_votes(generator, size, votes=2)
            assert torch.equal(vote_augment(pos[indices], None, 1, generator)[0], expected[k * world + rank])


class _MeanPosition(torch.nn.Module):
    """Logits from a cloud's mean x and z: a rotation about y (the voting augmentation) changes them."""

    num_classes, in_channels = 4, 3

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, pos):
        mean = pos.mean(1)
        return 10 * torch.stack([mean[:, 0], mean[:, 2], -mean[:, 0], -mean[:, 2]], -1) + self.anchor


def test_sharded_evaluation_sums_to_the_one_process_result_with_votes():
    from pcattn.engine import evaluate_classification as evaluate

    generator = torch.Generator().manual_seed(1)
    samples = [{"pos": torch.randn(6, 3, generator=generator) + torch.randn(1, 3, generator=generator),
                "label": torch.tensor(i % 4)} for i in range(23)]
    one = evaluate(_MeanPosition(), torch.utils.data.DataLoader(samples, batch_size=4), votes=3, seed=5)
    confusion = torch.zeros(4, 4, dtype=torch.long)
    for rank in range(2):  # no process group: each rank's own counts, summed here
        shard = torch.utils.data.DataLoader(samples, batch_sampler=ShardedBatches(len(samples), 4, rank, 2))
        confusion += torch.tensor(evaluate(_MeanPosition(), shard, votes=3, seed=5)["confusion"])
    assert confusion.tolist() == one["confusion"]


def test_two_processes_with_bf16_and_loader_workers(tiny_modelnet10_root, tmp_path):
    """DDP together with mixed precision and data-loading worker processes (1 epoch)."""
    out = tmp_path / "bf16-workers"
    torchrun(2, *train_args(tiny_modelnet10_root, out, epochs=1), "--precision", "bf16", "--num-workers", 1)
    rows = metric_rows(out)
    assert [row["epoch"] for row in rows] == [1] and math.isfinite(rows[0]["train_loss"])
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"


def test_two_processes_train_and_evaluate_part_segmentation(tmp_path):
    """--task partseg under torchrun: one epoch, then the sharded evaluation (mIoU sums merged over the ranks,
    votes in step) equals the one-process evaluation of the same checkpoint."""
    from test_partseg import write_hdf5_layout

    root = write_hdf5_layout(tmp_path / "shapenet_part_seg_hdf5_data", shapes=10, points=96)
    out = tmp_path / "parts"
    torchrun(2, "train", "--task", "partseg", "--dataset", "shapenetpart", "--data-root", root, "--model",
             "pt-seg-tiny-vector", "--num-points", 96, "--batch-size", 4, "--epochs", 1, "--threads", 1,
             "--no-progress", "--no-plots", "--out", out)
    result_path = tmp_path / "eval2.json"
    torchrun(2, "eval", "--checkpoint", out / "best.pt", "--votes", 2, "--batch-size", 3, "--json", result_path,
             "--no-progress")
    two = json.loads(result_path.read_text())
    one = evaluate_checkpoint(out / "best.pt", votes=2, batch_size=3, progress=False)
    assert two["samples"] == one["samples"] == 10
    assert two["confusion"] == one["confusion"] and two["category_shapes"] == one["category_shapes"]
    for key in ("instance_miou", "class_miou", "accuracy", "loss"):
        assert two[key] == pytest.approx(one[key], rel=1e-9), key


@pytest.mark.parametrize("shape", [(8, 16), (6, 16, 5)])
def test_cpu_sync_batchnorm_equals_batchnorm_far_from_zero_mean(shape, monkeypatch):
    """CPUSyncBatchNorm's arithmetic, in one process (the all-reduce made the identity), equals BatchNorm's for
    features with |mean| >> std: outputs, input gradients and running statistics (a one-pass variance,
    E[x^2] - E[x]^2, loses every digit here)."""
    import torch.distributed as dist

    from pcattn.engine import distributed as module

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(module._SumOverRanks, "apply", staticmethod(lambda values: values))
    generator = torch.Generator().manual_seed(0)
    x = (300 + 0.05 * torch.randn(*shape, generator=generator)).requires_grad_()
    weights = torch.randn(*shape, generator=generator)
    plain = torch.nn.BatchNorm1d(shape[1])
    synced = module.CPUSyncBatchNorm(shape[1])
    synced.load_state_dict(plain.state_dict())
    expected, got = plain(x), synced(x)
    assert torch.allclose(got, expected, atol=1e-3)
    grad_expected, = torch.autograd.grad((expected * weights).sum(), x)
    grad_got, = torch.autograd.grad((got * weights).sum(), x)
    assert torch.allclose(grad_got, grad_expected, rtol=1e-3, atol=1e-2 * float(grad_expected.abs().max()))
    assert torch.allclose(synced.running_mean, plain.running_mean)
    assert torch.allclose(synced.running_var, plain.running_var, rtol=1e-3)
