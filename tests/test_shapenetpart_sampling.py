"""ShapeNetPart in training and evaluation: training draws a new subset of each shape's points every
epoch, and evaluation sees every point of every shape (one shape per batch at its own size), as the
papers report; on written files with shapes of different sizes and on the real fixture files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pcattn.data.shapenetpart import SHAPENET_CATEGORY_PARTS, ShapeNetPart
from pcattn.engine import TrainConfig, evaluate_parts
from pcattn.engine.loaders import build_loaders

pytestmark = pytest.mark.usefixtures("one_thread")

TABLE, TABLE_SYNSET = 15, "04379243"
SIZES = {"train": (150, 90, 120, 200), "test": (130, 70)}  # points of each written shape


def write_normal_layout(root: Path) -> Path:
    """The ``..._v0_normal`` layout: tables of the sizes in SIZES, parts by height."""
    rng = np.random.default_rng(0)
    (root / TABLE_SYNSET).mkdir(parents=True)
    (root / "train_test_split").mkdir()
    parts = np.asarray(SHAPENET_CATEGORY_PARTS[TABLE])
    for split, sizes in SIZES.items():
        names = [f"{split}{index}" for index in range(len(sizes))]
        for name, size in zip(names, sizes):
            pos = rng.uniform(-1, 1, size=(size, 3))
            label = parts[np.minimum(((pos[:, 1] + 1) / 2 * len(parts)).astype(int), len(parts) - 1)]
            rows = np.concatenate([pos, np.zeros((size, 3)), label[:, None]], axis=1)
            np.savetxt(root / TABLE_SYNSET / f"{name}.txt", rows, fmt="%.6f")
        listed = [f"shape_data/{TABLE_SYNSET}/{name}" for name in names]
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(listed))
    (root / "train_test_split" / "shuffled_val_file_list.json").write_text("[]")
    return root


@pytest.fixture(scope="module")
def loaders(tmp_path_factory):
    root = write_normal_layout(tmp_path_factory.mktemp("shapenetpart") / "normal")
    config = TrainConfig(task="partseg", dataset="shapenetpart", data_root=str(root), num_points=64, batch_size=2,
                         augment=False).resolved()
    return build_loaders(config, torch.Generator().manual_seed(0))


def test_training_draws_a_new_subset_of_every_shape_each_epoch(loaders):
    train_loader, _ = loaders
    train_set = train_loader.dataset
    assert [len(points) for points in train_set.points] == list(SIZES["train"])  # every point kept
    first, second = train_set[3], train_set[3]
    assert first["pos"].shape == (64, 3) and first["seg"].shape == (64,)
    assert not torch.equal(first["pos"], second["pos"])  # another subset each time the shape is drawn
    epochs = [torch.cat([batch["pos"] for batch in train_loader]) for _ in range(2)]
    assert epochs[0].shape == (4, 64, 3) and not torch.equal(epochs[0], epochs[1])


def test_evaluation_sees_every_point_of_every_shape(loaders):
    _, test_loader = loaders
    batches = list(test_loader)
    assert [batch["pos"].shape[:2] for batch in batches] == [(1, 130), (1, 70)]  # one shape a batch, full size

    class LabelsByHeight(torch.nn.Module):
        """Scores the table's 3 parts by height: a fixed segmenter."""

        def forward(self, x, pos, batch=None, category=None):
            centres = torch.tensor([-2 / 3, 0.0, 2 / 3])
            scores = torch.full(pos.shape[:-1] + (50,), -1e4)
            scores[..., 47:50] = -(pos[..., 1:2] - centres) ** 2
            return scores

    result = evaluate_parts(LabelsByHeight(), test_loader)
    assert result["samples"] == 2 and sum(map(sum, result["confusion"])) == 130 + 70


def test_the_real_files_keep_every_point(shared_fixtures):
    v0 = shared_fixtures / "shapenetpart" / "shapenetcore_partanno_segmentation_benchmark_v0"
    shapes = ShapeNetPart(v0, "train", format="v0", num_points=None)
    for name, points, seg in zip(shapes.names, shapes.points, shapes.seg):
        synset, shape_id = name.split("/")
        lines = [line for line in (v0 / synset / "points" / f"{shape_id}.pts").read_text().splitlines() if line.strip()]
        assert points.shape == (len(lines), 3) and seg.shape == (len(lines),)
    assert len({len(points) for points in shapes.points}) > 1  # the real shapes differ in size
