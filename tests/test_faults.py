"""Issue 11, "nothing lost, nothing silent": run folders that cannot be clobbered, checkpoints that prove
their integrity, and a named error for every bad input. Kills and locks use real processes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pcattn.cli import main
from pcattn.engine import (CheckpointError, DiskFullError, RunFolderInUse, TrainConfig, load_checkpoint, load_model,
                           save_checkpoint, train)
from pcattn.engine import loop
from pcattn.engine.tasks import get_task
from pcattn.engine.checkpoint import model_checkpoint
from pcattn.models import create_model

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(root, out, **overrides):
    options = dict(dataset="modelnet10", format="folder", data_root=str(root), num_points=32, batch_size=8,
                   epochs=2, lr=3e-3, out=str(out), progress=False, plots=False, seed=0, model="pt-tiny-scalar")
    options.update(overrides)
    return TrainConfig(**options)


def epochs_logged(out):
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def python(code, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, **kwargs)


# ------------------------------------------------------------------------------------- 1. resume
def test_resume_without_last_pt_uses_config_json_or_refuses(tiny_modelnet10_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    task = get_task("classification")
    real_evaluate = task.evaluate

    def killed(*args, **kwargs):  # the run dies in its first epoch, before any checkpoint
        raise KeyboardInterrupt

    monkeypatch.setattr(task, "evaluate", killed)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tiny_modelnet10_root, out, num_points=24))
    monkeypatch.setattr(task, "evaluate", real_evaluate)
    assert not (out / "last.pt").exists() and (out / "config.json").is_file()
    (out / ".best.pt.x1y2.tmp").write_bytes(b"half")                          # 8: a killed save's leftovers
    # Without --resume the folder is protected; with it the saved settings (24 points) are used.
    assert main(["train", "--out", str(out), "--no-progress", "--no-plots"]) == 2
    assert "already holds a training run (metrics.jsonl, config.json)" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume", "--no-progress", "--no-plots"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["num_points"] == 24 and saved["dataset"] == "modelnet10" and saved["epochs"] == 2
    assert epochs_logged(out) == [1, 2] and not list(out.glob(".*.tmp"))

    # A folder that recorded epochs but lost last.pt cannot be resumed: refused, naming what is missing.
    (out / "last.pt").unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(["train", "--out", str(out), "--resume", "--epochs", "3", "--no-progress"]) == 2
    assert "last.pt is missing, but the folder holds best.pt" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before    # nothing touched
    # 8: a folder holding only best.pt is not overwritten without --resume either.
    for name in ("metrics.jsonl", "config.json", "eval.json"):
        (out / name).unlink(missing_ok=True)
    with pytest.raises(FileExistsError, match=r"already holds a training run \(best.pt\)"):
        train(tiny(tiny_modelnet10_root, out))


# ------------------------------------------------------------------------- 2. checkpoint + metrics
def test_a_kill_between_checkpoint_and_metrics_loses_no_line(tiny_modelnet10_root, tmp_path):
    out = tmp_path / "run"
    process = python(f"""
        import os, signal
        from pcattn.engine import TrainConfig, train, loop
        real = loop.append_metrics
        def append_then_die(path, metrics):
            if metrics["epoch"] == 2:   # last.pt of epoch 2 is on disk, its metrics line not yet
                os.kill(os.getpid(), signal.SIGKILL)
            real(path, metrics)
        loop.append_metrics = append_then_die
        train(TrainConfig(dataset="modelnet10", format="folder", data_root={str(tiny_modelnet10_root)!r},
                          num_points=32, batch_size=8, epochs=3, lr=3e-3, out={str(out)!r}, progress=False, plots=False,
                          model="pt-tiny-scalar", threads=1))
        """)
    assert process.wait(timeout=120) == -signal.SIGKILL
    assert load_checkpoint(out / "last.pt")["epoch"] == 2 and epochs_logged(out) == [1]
    train(tiny(tiny_modelnet10_root, out, epochs=3, resume=True))
    assert epochs_logged(out) == [1, 2, 3]
    assert [row["epoch"] for row in load_checkpoint(out / "last.pt")["history"]] == [1, 2, 3]


# ---------------------------------------------------------------------------------------- 3. lock
def test_a_second_run_on_the_same_folder_is_refused_and_a_dead_holder_does_not_block(tiny_modelnet10_root,
                                                                                       tmp_path):
    out = tmp_path / "run"
    holder = python(f"""
        import time
        from pcattn.engine.run_folder import RunFolderLock
        with RunFolderLock({str(out)!r}):
            print("locked", flush=True)
            time.sleep(120)
        """, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderInUse, match=rf"in use by another pcattn run \(process {holder.pid}\)") as refused:
            train(tiny(tiny_modelnet10_root, out, epochs=1))
        assert str(refused.value).startswith(f"{out} is in use")  # the message every rank prints, no "[Errno 16]"
        assert not (out / "config.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / ".lock").read_text().strip() == str(holder.pid)            # the stale file is still there
    train(tiny(tiny_modelnet10_root, out, epochs=1))                            # and does not block
    assert epochs_logged(out) == [1]



def test_a_forked_child_does_not_keep_the_run_folder_locked(tmp_path):
    """A DataLoader worker (a fork) that outlives its killed run must not refuse the run's resume."""
    from pcattn.engine.run_folder import RunFolderLock

    lock = RunFolderLock(tmp_path / "run").__enter__()
    started, ready = os.pipe()
    child = os.fork()
    if child == 0:  # the worker: lives on a while after its parent let go
        os.write(ready, b"1")  # past the fork (and its handlers)
        time.sleep(3)
        os._exit(0)
    try:
        assert os.read(started, 1) == b"1"
        lock.__exit__(None, None, None)
        with RunFolderLock(tmp_path / "run"):  # the resumed run, while the forked child still lives
            assert os.waitpid(child, os.WNOHANG) == (0, 0)
    finally:
        os.waitpid(child, 0)
        os.close(started)
        os.close(ready)


def test_a_new_run_beside_other_files_says_so(tmp_path):
    from pcattn.engine.run_folder import prepare_run_folder

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    (out / ".lock").write_text("")                                              # the run's own files are not counted
    with pytest.warns(UserWarning, match=r"holds 1 file\(s\) that are not a pcattn run's \(notes.txt\): the run's "
                                         r"files are written beside them"):
        prepare_run_folder(TrainConfig(out=str(out)), out)
def small_model():
    return create_model("pt-tiny-scalar", num_classes=3, widths=(16, 32), depths=(1, 1), head_channels=(16,), k=4)


def test_checksum_catches_a_flipped_bit_and_non_finite_weights_are_refused(tmp_path):
    model = small_model()
    path = save_checkpoint(tmp_path / "model.pt", model_checkpoint(model, ["a", "b", "c"]))
    load_checkpoint(path)
    weight = model.state_dict()["head.0.weight"] if "head.0.weight" in model.state_dict() else \
        max(model.state_dict().values(), key=lambda t: t.numel())
    raw = bytearray(path.read_bytes())
    start = bytes(raw).find(weight.numpy().tobytes())
    assert start > 0
    raw[start + 17] ^= 0x04                                                     # one bit of one weight
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum mismatch in 'model_state'"):
        load_checkpoint(path)

    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    save_checkpoint(path, model_checkpoint(model, ["a", "b", "c"]))
    with pytest.raises(CheckpointError, match="holds NaN or inf"):
        load_checkpoint(path)

    old = {k: v for k, v in model_checkpoint(small_model(), ["a", "b", "c"]).items() if k != "checksum"}
    torch.save(old, path)                                                       # a checkpoint of an older pcattn
    with pytest.warns(UserWarning, match="without a checksum"):
        assert load_checkpoint(path)["classes"] == ["a", "b", "c"]



def test_load_model_names_a_bad_kind_and_exported_models(tmp_path):
    path = save_checkpoint(tmp_path / "model.pt", model_checkpoint(small_model(), ["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"kind must be None, 'pcattn-classifier' or 'pcattn-segmenter'.*"
                                         r"got 'classification'"):
        load_model(path, kind="classification")
    torch.jit.save(torch.jit.trace(torch.nn.Linear(3, 2), torch.randn(1, 3)), tmp_path / "model_ts.pt")
    with pytest.raises(CheckpointError, match="a TorchScript archive .*torch.jit.load.*not a pcattn checkpoint"):
        load_model(tmp_path / "model_ts.pt")
    program = torch.export.export(torch.nn.Linear(3, 2), (torch.randn(1, 3),))
    torch.export.save(program, tmp_path / "model.pt2")
    with pytest.raises(CheckpointError, match="a torch.export program .*torch.export.load"):
        load_model(tmp_path / "model.pt2")
    onnx = pytest.importorskip("onnx")
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), tmp_path / "model.onnx")
    with pytest.raises(CheckpointError, match="an ONNX model .*onnxruntime"):
        load_model(tmp_path / "model.onnx")

# ---------------------------------------------------------------------------- 3/8. run identity
def test_a_last_pt_from_another_run_is_refused(tiny_modelnet10_root, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(tiny(tiny_modelnet10_root, a, epochs=1))
    train(tiny(tiny_modelnet10_root, b, epochs=1))
    shutil.copy(a / "last.pt", b / "last.pt")
    with pytest.raises(CheckpointError, match="belongs to another run"):
        train(tiny(tiny_modelnet10_root, b, epochs=2, resume=True))


# ---------------------------------------------------------------------------------- 6. disk full
def _small_filesystem(folder: Path, size: str) -> bool:
    folder.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def test_a_full_disk_is_named_and_the_last_checkpoint_is_kept(tmp_path):
    disk = tmp_path / "disk"
    if not _small_filesystem(disk, "1m"):
        pytest.skip("needs root and a mountable tmpfs to fill a disk for real")
    try:
        path = save_checkpoint(disk / "last.pt", model_checkpoint(small_model(), ["a", "b", "c"]))
        before = path.read_bytes()
        big = model_checkpoint(small_model(), ["a", "b", "c"], padding=torch.zeros(400_000))
        with pytest.raises(DiskFullError, match=r"last.pt: the disk is full .* the previous last.pt is intact"):
            save_checkpoint(path, big)
        assert path.read_bytes() == before and sorted(p.name for p in disk.iterdir()) == ["last.pt"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ------------------------------------------------------------------------------- 6/8. named errors
@pytest.mark.parametrize("option, message", [
    (["--threads", "0"], "threads must be >= 1, got 0"),
    (["--lr", "inf"], "lr must be a finite number, got inf"),
    (["--device", "tpu"], "device must be 'auto', 'cpu' or 'cuda'"),
    (["--attention-option", "chunk_size=-1"], "attention options {'chunk_size': -1} not accepted"),
    (["--attention-option", "groups=7"], "'groups' is set by the model itself"),
])
def test_bad_settings_are_named_before_the_run_folder_exists(tmp_path, capsys, option, message):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--no-progress", *option]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert not out.exists()


def test_a_diverging_run_says_so_and_keeps_its_last_checkpoint(tiny_modelnet10_root, tmp_path, monkeypatch):
    real_step = loop.train_step

    def diverging(state, x, pos, labels, config, device, epoch):
        if epoch == 2:
            raise FloatingPointError("epoch 2: the training loss became nan")
        return real_step(state, x, pos, labels, config, device, epoch)

    monkeypatch.setattr(loop, "train_step", diverging)
    with pytest.raises(FloatingPointError, match="diverged: last.pt keeps epoch 1"):
        train(tiny(tiny_modelnet10_root, tmp_path / "run"))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_eval_visualize_and_bench_fail_early_with_named_errors(tiny_modelnet10_root, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny(tiny_modelnet10_root, out, epochs=1))
    capsys.readouterr()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--json", str(blocker / "eval.json")]) == 2
    assert f"{blocker}/eval.json: cannot write it" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--data-root", str(blocker), "--no-progress"]) == 2
    assert str(blocker) in capsys.readouterr().err
    cloud = tmp_path / "cloud.npy"
    np.save(cloud, np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32))
    picture = tmp_path / "picname"
    assert main(["visualize", "--checkpoint", str(out / "best.pt"), "--input", str(cloud), "--views", "1",
                 "--size", "96", "--renderer", "matplotlib", "--out", str(picture)]) == 0
    assert f"wrote {picture}.png " in capsys.readouterr().out and Path(f"{picture}.png").is_file()
    assert main(["visualize", "--checkpoint", str(out / "best.pt"), "--input", str(cloud),
                 "--out", str(blocker / "x.png")]) == 2
    assert "cannot write it" in capsys.readouterr().err
    report = tmp_path / "bench.json"
    assert main(["bench", "--cases", "nonsense", "--out", str(report)]) == 2
    assert "--cases nonsense matches no case" in capsys.readouterr().err and not report.exists()
