"""Part segmentation end to end: training runs (built-in parts, ShapeNetPart HDF5 and the real v0 files),
resume, evaluation (voting, merging over processes), the command line and its errors."""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import pcattn.data
from pcattn.cli import main
from pcattn.data import BuiltinParts
from pcattn.data.shapenetpart import SHAPENET_CATEGORIES, SHAPENET_CATEGORY_PARTS
from pcattn.engine import TrainConfig, evaluate_parts, load_checkpoint, load_model, train
from pcattn.engine.metrics import PartSegmentationMetrics
from pcattn.models import PointTransformerSegmenter

from test_engine import metric_rows, train_killed_in_epoch_2

DATA = Path(__file__).resolve().parent / "data"

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: threads only add overhead


@pytest.fixture
def small_parts(monkeypatch):
    """The built-in parts with 4 train and 2 test shapes per category (64 and 16), for runs of seconds."""
    real = pcattn.data.build_part_dataset
    monkeypatch.setattr(pcattn.data, "build_part_dataset",
                        functools.partial(real, train_per_category=4, test_per_category=2))


def parts_config(out, **overrides):
    options = dict(task="partseg", num_points=96, batch_size=8, epochs=2, lr=5e-3, out=str(out), progress=False,
                   plots=False, seed=0)
    options.update(overrides)
    return TrainConfig(**options)


def test_partseg_run_writes_a_complete_run_folder(small_parts, tmp_path):
    out = tmp_path / "run"
    summary = train(parts_config(out, plots=True))
    assert not (out / "curves.png").exists()   # the engine draws nothing: pcattn train (or viz.plot_run) does
    from pcattn.viz import plot_run

    plot_run(out)
    for name in ("last.pt", "best.pt", "metrics.jsonl", "config.json", "eval.json", "curves.png", "confusion.png"):
        assert (out / name).is_file(), name
    rows = metric_rows(out)
    assert set(rows[0]) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "test_instance_miou",
                            "test_class_miou", "lr"}
    best = max(row["test_instance_miou"] for row in rows)
    assert summary["task"] == "partseg" and summary["best_score"] == pytest.approx(best)
    evaluation = json.loads((out / "eval.json").read_text())  # best.pt evaluated again: the same number
    assert evaluation["instance_miou"] == pytest.approx(best)
    assert set(evaluation["per_category"]) == set(BuiltinParts.categories)
    assert sum(map(sum, evaluation["confusion"])) == 16 * 96                  # every test point, once
    assert json.loads((out / "config.json").read_text())["task"] == "partseg"

    checkpoint = load_checkpoint(out / "best.pt")
    assert checkpoint["kind"] == "pcattn-segmenter"
    assert checkpoint["classes"] == list(BuiltinParts.part_names)
    assert checkpoint["category_parts"] == [list(parts) for parts in BuiltinParts.category_parts]
    model, classes, _ = load_model(out / "best.pt")
    assert isinstance(model, PointTransformerSegmenter) and model.num_categories == 8
    assert model(None, torch.randn(2, 40, 3), category=torch.tensor([0, 7])).shape == (2, 40, 20)


def test_partseg_training_learns(small_parts, tmp_path):
    """Eight short epochs on 32 shapes: the per-point labels are learnt far beyond a first guess."""
    summary = train(parts_config(tmp_path / "run", epochs=8, num_points=128, batch_size=4, lr=3e-3,
                                 label_smoothing=0))
    rows = metric_rows(tmp_path / "run")
    assert summary["best_score"] >= 0.4                                        # first epoch: 0.25
    assert rows[-1]["train_acc"] > rows[0]["train_acc"] + 0.2


def test_killed_partseg_run_resumes_to_the_same_result(small_parts, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    train(parts_config(whole, epochs=3))

    killed = tmp_path / "killed"
    train_killed_in_epoch_2(parts_config(killed, epochs=3), monkeypatch)
    assert load_checkpoint(killed / "last.pt")["epoch"] == 1
    torch.manual_seed(1234), np.random.seed(99)                                # the checkpoint restores them
    train(parts_config(killed, epochs=3, resume=True))
    assert metric_rows(killed) == metric_rows(whole)
    a, b = (torch.load(run / "last.pt", weights_only=True)["model_state"] for run in (whole, killed))
    assert all(torch.equal(a[key], b[key]) for key in a)


# ------------------------------------------------------------------------------------------ ShapeNetPart
MUG, TABLE = SHAPENET_CATEGORIES.index("Mug"), SHAPENET_CATEGORIES.index("Table")


def write_hdf5_layout(root, shapes=8, points=256):
    """PointNet's shapenet_part_seg_hdf5_data layout: mugs and tables, labels by height (bottom part first)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        category = np.array([[MUG if i % 2 else TABLE] for i in range(shapes)], dtype=np.uint8)
        data = rng.uniform(-1, 1, size=(shapes, points, 3)).astype(np.float32)
        pid = np.empty((shapes, points), dtype=np.uint8)
        for row, (c,) in enumerate(category):
            parts = SHAPENET_CATEGORY_PARTS[c]
            band = np.minimum(((data[row, :, 1] + 1) / 2 * len(parts)).astype(int), len(parts) - 1)
            pid[row] = np.asarray(parts)[band]
        with h5py.File(root / f"ply_data_{split}0.h5", "w") as handle:
            handle["data"], handle["label"], handle["pid"] = data, category, pid
        (root / f"{split}_hdf5_file_list.txt").write_text(f"data/shapenet_part_seg_hdf5_data/ply_data_{split}0.h5\n")
    return root


def test_shapenetpart_hdf5_trains_and_evaluates_from_the_command_line(tmp_path, capsys):
    root = write_hdf5_layout(tmp_path / "shapenet_part_seg_hdf5_data")
    out = tmp_path / "run"
    assert main(["train", "--dataset", "shapenetpart", "--data-root", str(root), "--model", "pt-seg-tiny-vector",
                 "--num-points", "128", "--batch-size", "4", "--epochs", "1", "--out", str(out), "--no-progress",
                 "--no-plots"]) == 0
    said = capsys.readouterr().out
    assert "16 categories, 50 parts" in said and "instance mIoU" in said
    config = json.loads((out / "config.json").read_text())
    assert (config["task"], config["format"]) == ("partseg", None) and config["up_axis"] == 1
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--votes", "2", "--no-progress",
                 "--json", str(tmp_path / "eval.json")]) == 0
    report = capsys.readouterr().out
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["votes"] == 2 and result["samples"] == 8
    assert set(result["per_category"]) == {"Mug", "Table"} and result["category_shapes"] == {"Mug": 4, "Table": 4}
    for line in ("instance mIoU", "class mIoU", "point accuracy", "Mug", "Table"):
        assert line in report
    assert f"{result['instance_miou']:.4f}" in report


def test_real_shapenetpart_files_train_and_name_a_missing_shape(shared_fixtures, tmp_path, capsys):
    v0 = tmp_path / "v0"
    shutil.copytree(shared_fixtures / "shapenetpart" / "shapenetcore_partanno_segmentation_benchmark_v0", v0)
    listed = json.loads((v0 / "train_test_split" / "shuffled_train_file_list.json").read_text())
    (v0 / "train_test_split" / "shuffled_val_file_list.json").write_text(json.dumps(listed[:2]))
    (v0 / "train_test_split" / "shuffled_test_file_list.json").write_text(json.dumps(listed[2:6]))
    common = ["--model", "pt-seg-tiny-scalar", "--num-points", "128", "--batch-size", "4", "--epochs", "1",
              "--no-progress", "--no-plots"]
    assert main(["train", "--task", "partseg", "--dataset", "shapenetpart", "--format", "v0", "--data-root", str(v0),
                 "--out", str(tmp_path / "run"), *common]) == 0
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["samples"] == 4

    normal = shared_fixtures / "shapenetpart" / "shapenetcore_partanno_segmentation_benchmark_v0_normal"
    assert main(["train", "--dataset", "shapenetpart", "--data-root", str(normal), "--out", str(tmp_path / "a"),
                 *common]) == 2
    error = capsys.readouterr().err
    assert "212e0563473156e255483301a044235.txt" in error and "listed in the test split but not found" in error
    # skipped (with a warning), the other real shapes train: 2 in train + val (one listed twice), 2 in test
    with pytest.warns(UserWarning, match="212e0563473156e255483301a044235.txt: listed in the .* split but not found; "
                                         "skipped"):
        assert main(["train", "--dataset", "shapenetpart", "--data-root", str(normal), "--skip-missing",
                     "--out", str(tmp_path / "b"), *common, "--batch-size", "2", "--use-normals"]) == 0
    assert json.loads((tmp_path / "b" / "eval.json").read_text())["per_category"].keys() == {"Skateboard", "Table"}


# ------------------------------------------------------------------------------------------ evaluation
class HeightSegmenter(nn.Module):
    """Scores part ``j`` of 4 by ``-(y - centre_j)^2``: a fixed segmenter with known predictions."""

    num_categories, in_channels = 2, 3

    def forward(self, x, pos, batch=None, category=None):
        centres = torch.tensor([-0.75, -0.25, 0.25, 0.75])
        return -(pos[..., 1:2] - centres) ** 2 * 10


class Clouds(torch.utils.data.Dataset):
    categories, part_names, category_parts = ("a", "b"), ("a0", "a1", "b0", "b1"), ((0, 1), (2, 3))

    def __init__(self, count=6, points=50):
        generator = torch.Generator().manual_seed(0)
        self.pos = torch.rand(count, points, 3, generator=generator) * 2 - 1
        self.category = torch.arange(count) % 2
        self.seg = torch.randint(0, 2, (count, points), generator=generator) + 2 * self.category[:, None]

    def __len__(self):
        return len(self.pos)

    def __getitem__(self, index):
        return {"pos": self.pos[index], "category": self.category[index], "seg": self.seg[index]}


def test_evaluate_parts_restricts_to_the_category_and_merges_over_processes():
    data = Clouds()
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    result = evaluate_parts(HeightSegmenter(), loader)
    expected = PartSegmentationMetrics(data.category_parts, data.categories)
    expected.update(HeightSegmenter()(None, data.pos), data.seg, data.category)
    wanted = expected.compute()
    for key in ("accuracy", "instance_miou", "class_miou", "per_category"):
        assert result[key] == pytest.approx(wanted[key]), key
    assert result["confusion"] == wanted["confusion"]
    predicted = torch.tensor(result["confusion"]).sum(0)
    assert predicted[2:].sum() == 3 * 50                                      # category b's shapes got b's parts
    # the sums of two halves (two processes) merge into the whole
    first, second = (PartSegmentationMetrics(data.category_parts) for _ in range(2))
    logits = HeightSegmenter()(None, data.pos)
    first.update(logits[:2], data.seg[:2], data.category[:2])
    second.update(logits[2:], data.seg[2:], data.category[2:])
    merged = PartSegmentationMetrics(data.category_parts)
    merged.load_state(first.state() + second.state())
    assert merged.compute()["instance_miou"] == pytest.approx(wanted["instance_miou"])
    with pytest.raises(ValueError, match="does not fit"):
        merged.load_state(torch.zeros(3))


def test_evaluate_parts_votes_average_the_rotated_passes():
    data = Clouds()
    loader = torch.utils.data.DataLoader(data, batch_size=3)
    once = evaluate_parts(HeightSegmenter(), loader, votes=1)
    assert evaluate_parts(HeightSegmenter(), loader, votes=1) == once
    # rotating about y keeps every height: this segmenter's votes all agree
    assert evaluate_parts(HeightSegmenter(), loader, votes=3, up_axis=1)["accuracy"] == pytest.approx(
        once["accuracy"])
    # about x the heights move, and the averaged prediction changes
    assert evaluate_parts(HeightSegmenter(), loader, votes=3, up_axis=0)["accuracy"] != once["accuracy"]


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("options, match", [
    (dict(task="partseg", dataset="modelnet40"), "a classification dataset, not a partseg one"),
    (dict(task="partseg", model="pt-tiny-vector"), "is a classification model"),
    (dict(dataset="builtin-parts", format="off"), "not a format of builtin-parts"),
    (dict(dataset="builtin", skip_missing=True), "skip_missing is for ShapeNetPart"),
    (dict(task="detection"), "task must be one of"),
    (dict(dataset="builtin-parts", download=True), "generated locally"),
])
def test_partseg_settings_are_checked_before_anything_runs(tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        train(TrainConfig(out=str(tmp_path / "run"), **options))
    assert not (tmp_path / "run").exists()


def test_a_partseg_run_evaluates_no_folder_and_cannot_resume_as_classification(small_parts, tmp_path, capsys):
    """(Segmenters export since pcattn exports every network: tests/test_compile_export.py.)"""
    out = tmp_path / "run"
    train(parts_config(out, epochs=1))
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--data-root", str(tmp_path), "--no-progress"]) == 2
    assert "the built-in parts are generated in memory and read no folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"cannot resume .*\(task: run has 'partseg', now 'classification'"):
        train(TrainConfig(task="classification", out=str(out), resume=True, progress=False))


def test_the_partseg_script_trains_part_segmentation(tmp_path):
    """scripts/train_partseg.py is pcattn train --task partseg: a classification dataset is refused as such."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_partseg.py"
    done = subprocess.run([sys.executable, str(script), "--dataset", "modelnet40", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "dataset 'modelnet40' is a classification dataset, not a partseg one" in done.stderr
    assert not (tmp_path / "run").exists()


def test_a_classifier_checkpoint_initialises_the_segmenter_encoder(small_parts, tmp_path, monkeypatch, capsys):
    """pcattn train --task partseg --init-encoder: the first training step sees the classifier's encoder
    tensors; a segmenter's checkpoint, or a classifier of another encoder, is refused by name."""
    from pcattn.engine import loop
    from pcattn.models import create_model
    from pcattn.models.checkpoint import load_encoder, model_checkpoint, save_checkpoint

    torch.manual_seed(1)
    classifier = create_model("pt-tiny-vector", num_classes=4)   # pt-seg-tiny-vector's encoder
    with torch.no_grad():
        for module in classifier.modules():
            if isinstance(module, nn.BatchNorm1d):  # statistics that a fresh model does not have
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    save_checkpoint(tmp_path / "classifier.pt", model_checkpoint(classifier, list("abcd")))
    at_start = {}
    real_epoch = loop.train_one_epoch

    def first_epoch(state, epoch, *args, **kwargs):
        if epoch == 1:
            at_start.update({name: t.clone() for name, t in state.model.encoder.state_dict().items()})
        return real_epoch(state, epoch, *args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", first_epoch)
    options = ["--epochs", "1", "--num-points", "96", "--batch-size", "8", "--no-progress", "--no-plots"]
    assert main(["train", "--task", "partseg", "--init-encoder", str(tmp_path / "classifier.pt"),
                 "--out", str(tmp_path / "run"), *options]) == 0
    expected = classifier.encoder.state_dict()
    assert at_start.keys() == expected.keys()
    assert all(torch.equal(at_start[name], expected[name]) for name in expected)

    segmenter = shutil.copy(DATA / "layout0.1_segmenter.pt", tmp_path / "segmenter.pt")
    assert main(["train", "--task", "partseg", "--init-encoder", str(segmenter), "--out", str(tmp_path / "a"),
                 *options]) == 2
    assert "classifier" in capsys.readouterr().err
    other = DATA / "layout0.1_classifier.pt"  # a pt-tiny-vector of widths 8, 16
    assert main(["train", "--task", "partseg", "--init-encoder", str(other), "--out", str(tmp_path / "b"),
                 *options]) == 2
    error = capsys.readouterr().err
    assert "pt-tiny-vector, widths [8, 16]" in error and "pt-seg-tiny-vector" in error
    with pytest.raises(TypeError, match="Encoder"):
        load_encoder(nn.Linear(3, 3), tmp_path / "classifier.pt")
