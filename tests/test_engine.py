"""Training, evaluation and checkpoints (pcattn.engine) on a tiny dataset in the real folder layout."""
from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch

from pcattn.engine import (CheckpointError, TrainConfig, evaluate_classification, load_checkpoint, load_model,
                           resolve_precision, save_checkpoint, train)
from pcattn.models import checkpoint as checkpoint_module
from pcattn.engine import device as device_module
from pcattn.engine import loop
from pcattn.engine.tasks import get_task
from pcattn.engine.evaluation import vote_augment
from pcattn.models import create_model

from conftest import TINY_MODELNET10_CLASSES as CLASSES


pytestmark = pytest.mark.usefixtures("one_thread")  # small models: threads only add overhead


@pytest.fixture
def data_root(tiny_modelnet10_root):
    return tiny_modelnet10_root


def tiny_config(data_root, out, **overrides):
    options = dict(dataset="modelnet10", format="folder", data_root=str(data_root), num_points=64, batch_size=8,
                   epochs=3, lr=3e-3, out=str(out), progress=False, plots=False, seed=0)
    options.update(overrides)
    return TrainConfig(**options)


def metric_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # wall-clock fields differ between runs
        row.pop("epoch_time"), row.pop("samples_per_s")
    return rows


def test_train_writes_a_complete_run_folder(data_root, tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_config(data_root, out, plots=True))
    assert not (out / "curves.png").exists()   # the engine draws nothing: pcattn train (or viz.plot_run) does
    from pcattn.viz import plot_run

    plot_run(out)
    for name in ("last.pt", "best.pt", "metrics.jsonl", "config.json", "eval.json", "curves.png", "confusion.png"):
        assert (out / name).is_file(), name
    rows = metric_rows(out)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert json.loads((out / "config.json").read_text())["up_axis"] == 2     # point folders are z-up
    assert set(rows[0]) == {"epoch", "train_loss", "train_acc", "test_loss", "test_oa", "test_macc", "lr"}
    assert rows[-1]["lr"] < rows[0]["lr"]                                     # cosine decay
    assert all(math.isfinite(row["train_loss"]) for row in rows)
    best = max(row["test_oa"] for row in rows)
    assert summary["best_oa"] == pytest.approx(best)
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["oa"] == pytest.approx(best) and evaluation["classes"] == CLASSES
    assert sum(map(sum, evaluation["confusion"])) == 20

    checkpoint = torch.load(out / "last.pt", weights_only=True)             # the contract of the issue
    assert checkpoint["kind"] == "pcattn-classifier" and checkpoint["epoch"] == 3
    for key in ("model_config", "model_state", "classes", "optimizer", "scheduler", "rng_state", "train_config"):
        assert checkpoint[key] is not None, key
    model, classes, _ = load_model(out / "best.pt")
    assert classes == CLASSES and not model.training
    assert model(None, torch.randn(2, 64, 3)).shape == (2, 10)
    assert_names_say_what_they_hold(tiny_config(data_root, out), checkpoint, out, best, model)


def assert_names_say_what_they_hold(config, checkpoint, out, best, model):
    """The best score is stored as best_score with the metric it is; a checkpoint of 0.1 (best_acc) still
    restores it; TrainingState.training_module is the module a step calls; evaluate() is split by task;
    the old names still work, with a FutureWarning."""
    from pcattn.engine.evaluation import evaluate
    from pcattn.engine.tasks import Labels

    assert checkpoint["best_score"] == pytest.approx(best) and checkpoint["best_metric"] == "test_oa"
    assert "best_acc" not in checkpoint
    old = {key: value for key, value in checkpoint.items() if key not in ("best_score", "best_metric")}
    old["best_acc"] = 0.125
    config = config.resolved()
    state = loop.build_training(config, Labels.of_checkpoint(checkpoint), 5, torch.device("cpu"),
                                torch.Generator())
    loop.restore(state, old, out / "last.pt")
    assert state.best_score == 0.125
    loop.restore(state, checkpoint, out / "last.pt")
    assert state.best_score == pytest.approx(best)
    assert state.training_module is state.model
    with pytest.warns(FutureWarning, match="training_module"):
        assert state.forward is state.model
    with pytest.raises(TypeError, match="evaluate_parts"):
        evaluate_classification(create_model("pt-seg-tiny-vector", num_classes=4, num_categories=2), [])
    with pytest.warns(FutureWarning, match="evaluate_classification"):
        loader = torch.utils.data.DataLoader([{"pos": torch.randn(64, 3), "label": torch.tensor(1)}], batch_size=1)
        assert evaluate(model, loader, "cpu", classes=CLASSES)["samples"] == 1


@pytest.mark.parametrize("attention", ["vector", "scalar"])
def test_training_learns(data_root, tmp_path, attention):
    """Ten short epochs on 40 shapes of 10 classes: well above chance (10%) on the held-out shapes."""
    summary = train(tiny_config(data_root, tmp_path / "run", model=f"pt-tiny-{attention}", epochs=10, up_axis=1))
    assert summary["best_oa"] >= 0.3
    assert summary["final"]["train_loss"] < metric_rows(tmp_path / "run")[0]["train_loss"]


def train_killed_in_epoch_2(config, monkeypatch):
    """``train(config)`` killed in the middle of epoch 2: its training pass is done, its checkpoint not yet written
    (the run's task evaluates after each training pass)."""
    task = get_task(config.resolved().task)
    real_evaluate, calls = task.evaluate, []

    def dying_evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(task, "evaluate", dying_evaluate)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(task, "evaluate", real_evaluate)


@pytest.mark.parametrize("workers", [0, 2])
def test_killed_run_resumes_to_the_same_result_as_an_uninterrupted_one(data_root, tmp_path, monkeypatch, workers):
    """Also with loader processes: their seeds come from the loader's generator, which the checkpoint holds."""
    whole = tmp_path / "whole"
    train(tiny_config(data_root, whole, num_workers=workers))

    killed = tmp_path / "killed"
    train_killed_in_epoch_2(tiny_config(data_root, killed, num_workers=workers), monkeypatch)
    assert load_checkpoint(killed / "last.pt")["epoch"] == 1
    assert not list(killed.glob(".*tmp*"))                                   # no temporary files left behind

    # Disturb every random stream before resuming: the checkpoint must restore them.
    torch.manual_seed(1234), np.random.seed(99)
    train(tiny_config(data_root, killed, resume=True, num_workers=workers))
    assert metric_rows(killed) == metric_rows(whole)
    a, b = (torch.load(run / "last.pt", weights_only=True) for run in (whole, killed))
    assert a["model_state"].keys() == b["model_state"].keys()
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key
    assert a["best_epoch"] == b["best_epoch"]


def test_same_seed_same_metrics_other_seed_other_metrics(data_root, tmp_path):
    rows = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(tiny_config(data_root, tmp_path / name, epochs=2, seed=seed))
        rows[name] = metric_rows(tmp_path / name)
    assert rows["a"] == rows["b"]
    assert rows["a"] != rows["c"]


def test_run_folder_is_protected_and_resume_checks_settings(data_root, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(data_root, out, epochs=1))
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(data_root, out, epochs=1))
    with pytest.raises(ValueError, match="lr: run has 0.003, now 0.1"):
        train(tiny_config(data_root, out, epochs=2, lr=0.1, resume=True))
    # Extending a finished run is allowed and continues from epoch 2.
    train(tiny_config(data_root, out, epochs=2, resume=True))
    assert [row["epoch"] for row in metric_rows(out)] == [1, 2]
    # --resume in an empty folder starts a new run (a run killed before its first checkpoint).
    fresh = tmp_path / "fresh"
    train(tiny_config(data_root, fresh, epochs=1, resume=True))
    assert load_checkpoint(fresh / "last.pt")["epoch"] == 1


def test_bad_settings_are_named(data_root, tmp_path):
    for overrides, match in ((dict(epochs=0), "epochs"), (dict(optimizer="adam"), "optimizer"),
                             (dict(model="pt-huge"), "unknown model"), (dict(warmup=1.5), "warmup"),
                             (dict(dataset="shapenet"), "dataset"), (dict(up_axis=5), "up_axis"), (dict(batch_size=64), "fewer than batch_size"),
                             (dict(device="cuda:0" if not torch.cuda.is_available() else "tpu"), "device")):
        with pytest.raises(ValueError, match=match):
            train(tiny_config(data_root, tmp_path / "bad", **overrides))


# ---------------------------------------------------------------------------------------- precision
def test_precision_names_defaults_and_support(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision(None, cpu) == "32" and resolve_precision(None, torch.device("cuda")) == "fp16"
    assert resolve_precision("BF16", cpu) == "bf16"
    if hasattr(torch, "get_autocast_dtype"):                          # torch >= 2.4 autocasts to float16 on the CPU
        assert resolve_precision("fp16", cpu) == "fp16"
    with pytest.raises(ValueError, match="precision must be '32', 'bf16' or 'fp16', got 'fp8'"):
        resolve_precision("fp8", cpu)
    with pytest.raises(ValueError, match="precision must be"):
        TrainConfig(precision="half").resolved()
    monkeypatch.setattr(device_module, "_autocast_supported", lambda device_type, dtype: False)
    with pytest.raises(ValueError, match="'fp16': this torch .* cannot autocast to torch.float16 on cpu"):
        resolve_precision("fp16", cpu)


def test_precision_is_recorded_and_a_resume_cannot_change_it(data_root, tmp_path, capsys):
    from pcattn.cli import main

    out = tmp_path / "run"
    assert main(["train", "--dataset", "modelnet10", "--data-root", str(data_root), "--num-points", "64",
                 "--batch-size", "8", "--epochs", "1", "--model", "pt-tiny-vector", "--device", "cpu", "--out", str(out),
                 "--no-progress", "--no-plots"]) == 0
    assert json.loads((out / "config.json").read_text())["precision"] == "32"      # the CPU's default, resolved
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint["train_config"]["precision"] == "32" and checkpoint["scaler"] is None
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--precision", "bf16"]) == 2
    assert "precision: run has '32', now 'bf16'" in capsys.readouterr().err
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    with pytest.raises(ValueError, match="precision: run has '32', now 'fp16'"):
        train(tiny_config(data_root, out, epochs=2, precision="fp16", resume=True))


def test_bf16_training_runs_in_bf16(data_root, tmp_path):
    out = tmp_path / "run"
    options = dict(model="pt-tiny-vector", epochs=1, device="cpu")
    bf16 = train(tiny_config(data_root, out, precision="bf16", **options))["final"]
    assert math.isfinite(bf16["train_loss"]) and math.isfinite(bf16["test_loss"])
    full = train(tiny_config(data_root, tmp_path / "float32", precision="32", **options))["final"]
    assert bf16["train_loss"] != full["train_loss"] and bf16["test_loss"] != full["test_loss"]   # autocast was on
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint["train_config"]["precision"] == "bf16" and checkpoint["scaler"] is None   # no scaler for bf16
    assert all(value.dtype == torch.float32 for value in checkpoint["model_state"].values()
               if value.is_floating_point())                                               # float32 master weights


def test_fp16_run_keeps_its_grad_scaler_and_resumes_to_the_same_result(data_root, tmp_path, monkeypatch):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    config = dict(model="pt-tiny-vector", epochs=2, precision="fp16", device="cpu")
    train(tiny_config(data_root, whole, **config))
    scaler = load_checkpoint(whole / "last.pt")["scaler"]
    assert scaler is not None and scaler["scale"] > 0
    train_killed_in_epoch_2(tiny_config(data_root, killed, **config), monkeypatch)
    saved = load_checkpoint(killed / "last.pt")
    assert saved["epoch"] == 1 and saved["scaler"] is not None
    # The resumed run's new scaler starts at 2**5, not 2**16: only the saved state puts it back in step.
    monkeypatch.setattr(torch.amp.GradScaler, "__init__", _scaler_starting_at(2.0 ** 5))
    train(tiny_config(data_root, killed, resume=True, **config))
    assert metric_rows(killed) == metric_rows(whole)
    a, b = (load_checkpoint(run / "last.pt") for run in (whole, killed))
    assert all(torch.equal(a["model_state"][key], b["model_state"][key]) for key in a["model_state"])
    assert a["scaler"] == b["scaler"]


def _scaler_starting_at(scale):
    init = torch.amp.GradScaler.__init__

    def scaler_init(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "init_scale": scale})

    return scaler_init


# ---------------------------------------------------------------------------------------- checkpoints
def small_checkpoint(**changes):
    model = create_model("pt-tiny-scalar", num_classes=3, widths=(16, 32), depths=(1, 1), head_channels=(16,), k=4)
    checkpoint = {"kind": "pcattn-classifier", "format_version": 1, "model_config": model.config,
                  "model_state": model.state_dict(), "classes": ["a", "b", "c"], "epoch": 1}
    checkpoint.update(changes)
    return model, checkpoint


def test_checkpoint_round_trip(tmp_path):
    model, checkpoint = small_checkpoint()
    path = save_checkpoint(tmp_path / "sub" / "model.pt", checkpoint)
    assert path.stat().st_mode & 0o777 == 0o666 & ~checkpoint_module._umask()            # not mkstemp's private 0600
    loaded, classes, stored = load_model(path)
    assert classes == ["a", "b", "c"] and stored["epoch"] == 1
    pos = torch.randn(2, 32, 3)
    model.eval()
    assert torch.equal(loaded(None, pos), model(None, pos))


@pytest.mark.parametrize("case, match", [
    ("missing", "not found"),
    ("empty", "empty"),
    ("garbage", "truncated or corrupt"),
    ("truncated", "truncated or corrupt"),
    ("state_dict", "bare state_dict"),
    ("other_kind", "expected kind 'pcattn-classifier'"),
    ("newer", "format version 99"),
    ("incomplete", "missing \\['model_state'\\]"),
    ("wrong_weights", "weights do not fit"),
    ("unknown_model", "cannot be built"),
    ("pickled_object", "other than tensors"),
])
def test_unusable_checkpoints_get_clear_errors(tmp_path, case, match):
    model, good = small_checkpoint()
    path = tmp_path / f"{case}.pt"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "garbage":
        path.write_text("this is not a checkpoint\n")
    elif case == "truncated":
        save_checkpoint(path, good)
        path.write_bytes(path.read_bytes()[:4000])
    elif case == "state_dict":
        torch.save(model.state_dict(), path)
    elif case == "other_kind":
        torch.save({"kind": "detector", "state": {}}, path)
    elif case == "newer":
        torch.save({**good, "format_version": 99}, path)
    elif case == "incomplete":
        torch.save({k: v for k, v in good.items() if k != "model_state"}, path)
    elif case == "wrong_weights":
        other = create_model("pt-tiny-vector", num_classes=3, widths=(16, 32), depths=(1, 1), head_channels=(16,))
        torch.save({**good, "model_state": other.state_dict()}, path)
    elif case == "unknown_model":
        torch.save({**good, "model_config": {**good["model_config"], "name": "pt-gone"}}, path)
    elif case == "pickled_object":
        torch.save({**good, "extra": torch.nn.ReLU()}, path)
    error = FileNotFoundError if case == "missing" else CheckpointError
    with pytest.raises(error, match=match) as caught:
        load_model(path)
    assert str(path) in str(caught.value)


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    _, checkpoint = small_checkpoint()
    path = save_checkpoint(tmp_path / "last.pt", checkpoint)
    before = path.read_bytes()

    def broken_save(obj, stream):
        stream.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {**checkpoint, "epoch": 2})
    assert path.read_bytes() == before                                        # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]          # and no temporary file is left


# ---------------------------------------------------------------------------------------- evaluation
class FixedPredictions(torch.nn.Module):
    """Predicts class ``round(pos[0, 0])`` of each cloud (its first coordinate encodes the answer)."""

    num_classes, in_channels = 3, 3

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, pos):
        return torch.nn.functional.one_hot(pos[:, 0, 0].round().long().clamp(0, 2), 3).float() * 10 + self.weight


def test_evaluate_metrics_and_confusion():
    # true labels 0,0,0,0,1,1,2; predictions 0,0,0,1,1,1,0
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 0, 1, 1, 1, 0])
    pos = torch.zeros(7, 5, 3)
    pos[:, 0, 0] = predicted.float()
    loader = [{"pos": pos[:4], "label": labels[:4]}, {"pos": pos[4:], "label": labels[4:]}]
    result = evaluate_classification(FixedPredictions(), loader, "cpu", classes=["a", "b", "c"])
    assert result["oa"] == pytest.approx(5 / 7)
    assert result["per_class"] == {"a": 0.75, "b": 1.0, "c": 0.0}
    assert result["macc"] == pytest.approx((0.75 + 1.0 + 0.0) / 3)
    assert result["confusion"] == [[3, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert result["samples"] == 7 and result["votes"] == 1


class FirstPointSide(torch.nn.Module):
    """Two classes: 0 when a cloud's first point lies on the +x side, 1 on the -x side, more sure the
    farther it is; remembers the positions of every pass."""

    num_classes, in_channels = 2, 3

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.passes = []

    def forward(self, x, pos):
        self.passes.append(pos.clone())
        return self.logits(pos) + self.weight

    @staticmethod
    def logits(pos):
        first_x = pos[:, 0, 0]
        return torch.stack([first_x, -first_x], -1) * 3


def test_evaluate_with_votes_averages_the_probabilities_of_augmented_passes():
    pos = torch.randn(24, 8, 3, generator=torch.Generator().manual_seed(0))
    pos[:, 0] = torch.tensor([1.0, 0.0, 0.0])               # unrotated, every cloud is class 0 (its label)
    labels = torch.zeros(24, dtype=torch.long)
    loader = [{"pos": pos[i:i + 8], "label": labels[i:i + 8]} for i in range(0, 24, 8)]
    model = FirstPointSide()
    run = functools.partial(evaluate_classification, model, loader, "cpu", up_axis=1, classes=["plus", "minus"])

    one = run(votes=1)
    assert one["oa"] == 1.0 and len(model.passes) == 3      # one pass per batch
    model.passes.clear()
    three = run(votes=3, seed=0)
    passes = list(model.passes)
    assert len(passes) == 9                                   # three passes per batch
    expected_predictions = []
    for batch, (plain, *augmented) in zip(loader, zip(*[iter(passes)] * 3)):
        assert torch.equal(plain, batch["pos"])               # the first pass sees the clouds as they are
        for moved in augmented:                               # the others: rotated about y (up) and scaled
            assert not torch.allclose(moved, plain)
            scale = moved[:, 1:].norm(dim=-1) / plain[:, 1:].norm(dim=-1)     # (the first point has y = 0)
            assert torch.allclose(moved[:, 1:, 1] / plain[:, 1:, 1], scale, atol=1e-4)
        probabilities = sum(FirstPointSide.logits(p).softmax(-1) for p in (plain, *augmented))
        expected_predictions.append(probabilities.argmax(-1))
    predicted_zero = int((torch.cat(expected_predictions) == 0).sum())
    assert three["confusion"] == [[predicted_zero, 24 - predicted_zero], [0, 0]]
    assert three["oa"] == predicted_zero / 24 < 1.0           # the votes turned some clouds over
    assert three["loss"] == pytest.approx(one["loss"])        # the loss is the plain pass's

    model.passes.clear()
    assert run(votes=3, seed=0) == three                                                # seeded voting
    assert all(torch.equal(a, b) for a, b in zip(model.passes, passes))
    model.passes.clear()
    run(votes=3, seed=1)
    assert not torch.equal(model.passes[1], passes[1])                                  # another seed, other votes
    with pytest.raises(ValueError, match="votes"):
        run(votes=0)


def test_vote_augmentation_rotates_about_the_up_axis_and_keeps_normals_unit():
    generator = torch.Generator().manual_seed(0)
    pos = torch.randn(4, 50, 3)
    normals = torch.nn.functional.normalize(torch.randn(4, 50, 3), dim=-1)
    new_pos, new_x = vote_augment(pos, torch.cat([pos, normals], -1), 1, generator)
    ratio = new_pos[..., 1] / pos[..., 1]                                     # the up coordinate is only scaled
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-4)
    assert ((ratio[:, 0] >= 0.9 - 1e-6) & (ratio[:, 0] <= 1.1 + 1e-6)).all()
    assert torch.allclose(new_x[..., 3:].norm(dim=-1), torch.ones(4, 50), atol=1e-5)
    assert torch.equal(new_x[..., :3], new_pos)


def test_schedule_warms_up_then_decays_to_zero():
    factor = loop.lr_schedule(100, 0.1)
    values = [factor(step) for step in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(values[:10], values[1:10]))
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert values[-1] < 0.01


def test_download_reaches_the_modelnet_downloader(tmp_path, monkeypatch):
    """--download asks ModelNetOFF to fetch the zip when nothing is on disk (offline here: the fetch is faked)."""
    from pcattn.data.modelnet import ModelNetOFF

    calls = []

    def fake_download(self, name):
        calls.append((self.root, name))
        raise ConnectionError("offline")

    monkeypatch.setattr(ModelNetOFF, "_download", fake_download)
    with pytest.raises(ConnectionError):
        train(TrainConfig(dataset="modelnet10", data_root=str(tmp_path / "data"), download=True,
                          out=str(tmp_path / "run"), progress=False))
    assert calls == [(tmp_path / "data", "10")]
    with pytest.raises(ValueError, match="format 'off'"):
        train(TrainConfig(dataset="modelnet40", format="hdf5", download=True, out=str(tmp_path / "run")))
