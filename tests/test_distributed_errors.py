"""An error on one rank of a ``torchrun`` job ends every rank within seconds, with that rank's message:
a NaN loss on rank 1 only, a run folder locked by another run (rank 0 holds the lock), rank 0 or
rank 1 failing to build the data, and ranks that do not share ``--out`` (two machines with their own
disks). One job of two gloo processes runs every case in turn (each case ends on both ranks before
the next starts: a rank left waiting would hang the job, and the test's timeout would say so)."""
from __future__ import annotations

import json

import pytest

from test_distributed import ENV, torchrun_command

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = ("nan on rank 1", "locked folder", "data on rank 0", "data on rank 1", "unshared out")

# Each case: the failure injected by monkeypatching (as NO_DROPOUT_TRAIN in test_distributed.py), then
# `pcattn train` on every rank; every rank writes its exit code, its error message and the seconds taken.
SCRIPT = """
import contextlib, io, json, os, sys, time
import torch.distributed as dist
from pcattn.cli import main
from pcattn.engine import loaders, tasks
from pcattn.engine.run_folder import RunFolderLock, check_shared_folder

check_shared_folder.__defaults__ = (0.2,)  # seconds a rank waits for rank 0's file: no network file system here

dist.init_process_group("gloo")  # one group for every case: pcattn uses it and leaves it open
rank = dist.get_rank()
data_root, base = sys.argv[1], sys.argv[2]
args = ["train", "--dataset", "modelnet10", "--format", "folder", "--data-root", data_root, "--num-points", "32",
        "--batch-size", "8", "--epochs", "1", "--model", "pt-tiny-vector", "--threads", "1", "--no-progress",
        "--no-plots"]
loss, build = tasks.Task.loss, loaders._build_loaders

def nan_loss(self, *args):
    value = loss(self, *args)
    return value * float("nan") if rank == 1 else value

def data_fails_on(failing):
    def failing_build(*args, **kwargs):
        if rank == failing:
            raise ValueError(f"injected: rank {failing} cannot read the data")
        return build(*args, **kwargs)
    return failing_build

def run(case, out, held=None):
    stderr = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stderr(stderr):
        code = main([*args, "--out", out])
    lines = [line for line in stderr.getvalue().splitlines() if "error" in line]
    with open(f"{base}/results-{rank}.jsonl", "a") as results:
        results.write(json.dumps({"case": case, "rank": rank, "code": code, "error": lines[-1] if lines else "",
                                  "seconds": time.monotonic() - started}) + "\\n")
    tasks.Task.loss, loaders._build_loaders = loss, build

tasks.Task.loss = nan_loss
run("nan on rank 1", f"{base}/nan")
with RunFolderLock(f"{base}/locked") if rank == 0 else contextlib.nullcontext():  # another run holds it
    run("locked folder", f"{base}/locked")
loaders._build_loaders = data_fails_on(0)
run("data on rank 0", f"{base}/data0")
loaders._build_loaders = data_fails_on(1)
run("data on rank 1", f"{base}/data1")
run("unshared out", f"{base}/unshared-{rank}")  # as two machines, each with its own disk at that path
dist.barrier()
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def outcomes(tiny_modelnet10_root, tmp_path_factory):
    import subprocess

    folder = tmp_path_factory.mktemp("rank-errors")
    script = folder / "failing_ranks.py"
    script.write_text(SCRIPT)
    done = subprocess.run(torchrun_command(2, tiny_modelnet10_root, folder, script=script), env=ENV,
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(line) for rank in (0, 1) for line in (folder / f"results-{rank}.jsonl").read_text().splitlines()]
    return {(row["case"], row["rank"]): row for row in rows}


@pytest.mark.parametrize("case, message", [
    ("nan on rank 1", "epoch 1: the training loss became nan on rank 1 of 2"),
    ("locked folder", "is in use by another pcattn run"),
    ("data on rank 0", "injected: rank 0 cannot read the data"),
    ("data on rank 1", "injected: rank 1 cannot read the data"),
    ("unshared out", "host "),
])
def test_an_error_on_one_rank_ends_every_rank_with_its_message(outcomes, case, message):
    for rank in (0, 1):
        row = outcomes[(case, rank)]
        assert row["code"] == 2 and message in row["error"], row
        assert row["seconds"] < 10, row


def test_ranks_without_a_shared_out_are_told_what_is_needed(outcomes):
    error = outcomes[("unshared out", 0)]["error"]
    assert "on rank 1 of 2: host " in error and "--out must be a folder every machine shares" in error
